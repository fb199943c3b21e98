"""The approval form of a waiting sequence's admin page: what it refuses, changing
nothing, and who sees it. Database-only (drain()); the browser test gives the approval."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from django.urls import reverse

from sequence import Sequence, Step, WaitFor
from sequence.models import SequenceEvent
from sequence.testing import drain

from .lifecycle_support import make_user

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("testing")]


@pytest.fixture
def testing() -> Any:
    with override_settings(SEQUENCE_TESTING=True):
        yield


class Prepare(Step):
    def perform(self) -> None:
        self.data["prepared"] = True


class Refund(Sequence):
    name = "approval_tests.Refund"
    steps = [Prepare, WaitFor("approved"), Prepare, WaitFor("shipped")]


def waiting_refund() -> Refund:
    seq = Refund.start({})
    drain()
    seq.refresh()
    assert seq.status == "waiting"
    return seq


def send_url(pk: int) -> str:
    return reverse("admin:sequence_sequencerecord_send", args=[pk])


def detail_url(pk: int) -> str:
    return reverse("admin:sequence_sequencerecord_change", args=[pk])


def post(client: Any, seq: Refund, **form: str) -> list[str]:
    response = client.post(send_url(seq.id), {"event": "approved", **form}, follow=True)
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def unchanged(seq: Refund) -> None:
    seq.refresh()
    assert seq.status == "waiting"
    assert "approved_by" not in seq.data
    assert not SequenceEvent.objects.filter(sequence_id=seq.id).exists()


def test_the_page_of_a_waiting_sequence_has_the_form_with_a_fresh_event_id(admin_client):
    seq = waiting_refund()
    first = admin_client.get(detail_url(seq.id)).context["approval"]
    second = admin_client.get(detail_url(seq.id)).context["approval"]
    assert first["event"] == "approved"
    assert first["event_id"] != second["event_id"]
    assert 'data-testid="approval"' in admin_client.get(detail_url(seq.id)).content.decode()


def test_bad_json_is_refused_and_nothing_changes(admin_client):
    seq = waiting_refund()
    messages = post(admin_client, seq, data='{"approved_by": ', event_id="a-1")
    assert messages[0].startswith("The data is not JSON (")
    assert messages[0].endswith("nothing was sent.")
    unchanged(seq)
    assert post(admin_client, seq, data="[1, 2]", event_id="a-2") == [
        "The data of event 'approved' must be a dict (a JSON object), not list [1, 2]."
    ]
    unchanged(seq)


def test_an_event_the_plan_does_not_await_is_refused(admin_client):
    seq = waiting_refund()
    messages = post(admin_client, seq, event="aproved", data="{}", event_id="a-1")
    assert messages == [
        "approval_tests.Refund does not wait for 'aproved': no WaitFor of its plan does "
        "(it waits for ['approved', 'shipped']). Check the event's name."
    ]
    unchanged(seq)


def test_a_sequence_no_longer_waiting_is_refused(admin_client):
    seq = waiting_refund()
    seq.cancel()
    messages = post(admin_client, seq, data='{"approved_by": "grace"}', event_id="a-1")
    assert messages == [
        f"approval_tests.Refund #{seq.id} is canceled, no longer waiting; nothing was sent."
    ]
    assert not SequenceEvent.objects.filter(sequence_id=seq.id).exists()
    assert admin_client.get(detail_url(seq.id)).context["approval"] is None


def test_a_second_submission_of_one_form_changes_nothing(admin_client):
    seq = waiting_refund()
    form = {"data": '{"approved_by": "grace"}', "event_id": "a-1"}
    assert post(admin_client, seq, **form) == [
        f"Sent approved to approval_tests.Refund #{seq.id}: it is now pending."
    ]
    drain()
    seq.refresh()
    assert seq.status == "waiting"
    assert seq.data["approved_by"] == "grace"
    assert post(admin_client, seq, **form) == ["This form was sent already; nothing changed."]
    assert SequenceEvent.objects.filter(sequence_id=seq.id).count() == 1


def test_the_form_needs_the_change_permission(client):
    seq = waiting_refund()
    client.force_login(make_user("viewer", "view"))
    assert client.get(detail_url(seq.id)).context["approval"] is None
    response = client.post(send_url(seq.id), {"event": "approved", "data": "{}", "event_id": "a"})
    assert response.status_code == 403
    unchanged(seq)
