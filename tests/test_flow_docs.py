"""The example of docs/flow-control.md, as the page shows it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from sequence.models import SequenceRecord
from sequence.testing import drain
from testproject.testapp.flow import SyncAccount

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def testing() -> Any:
    with override_settings(SEQUENCE_TESTING=True):
        yield


def test_one_sync_per_account_runs_at_a_time():
    first = SyncAccount.start({"account_id": 7})
    second = SyncAccount.start({"account_id": 7})
    other = SyncAccount.start({"account_id": 8})
    assert [first.status, second.status, other.status] == ["pending", "queued", "pending"]
    assert drain() == 3
    for seq in (first, second, other):
        seq.refresh()
        assert seq.status == "completed"
    assert SequenceRecord.objects.get(pk=second.id).data["fetched"] == 7
