"""Fault 11: a step that runs past its timeout, and one that swallows RQ's timeout
exception and carries on: neither commits a result after its deadline."""

from __future__ import annotations

import pytest

from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.faults import OverrunChain, SwallowChain
from testproject.testapp.models import BodyRun

from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.mark.parametrize("kind", ["simple", "fork"])
def test_steps_past_their_deadline_never_commit(fleet, kind):
    recovers = [OverrunChain.start({}) for _ in range(2)]
    hopeless = OverrunChain.start({"overrun_attempts": 5})
    swallowers = [SwallowChain.start({}) for _ in range(2)]
    ids = [s.id for s in [*recovers, hopeless, *swallowers]]
    fleet.start(2, kind=kind)
    settle(ids, timeout=60)

    for seq in recovers:
        record = SequenceRecord.objects.get(pk=seq.id)
        assert (record.status, record.data["overrun_done"]) == (Status.COMPLETED, 2)
    record = SequenceRecord.objects.get(pk=hopeless.id)
    assert record.status == Status.FAILED
    assert "JobTimeoutException" in record.error
    for seq in swallowers:
        record = SequenceRecord.objects.get(pk=seq.id)
        assert record.status == Status.COMPLETED
        assert "swallowed" not in record.data  # attempt 1's data was never committed
        first = StepAttempt.objects.get(sequence_id=seq.id, step="Swallow", attempt=1)
        assert first.outcome == "failed"
        assert "StepDeadlineExceeded" in first.error
        assert BodyRun.objects.filter(seq_id=seq.id, note="after-swallow").exists()
    report = check(
        f"11 timeouts overrun and swallowed ({kind} workers)", ids,
        expect={**{i: {Status.COMPLETED} for i in ids}, hopeless.id: {Status.FAILED}},
        faults={"overrunning_attempts": 2 + 3, "swallowed_timeouts": 2},
    )  # fmt: skip
    assert_ok(report)
