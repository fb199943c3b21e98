"""Fault 15: compensations survive what a step survives.

A worker killed mid-compensation, a compensation job lost with Redis, and a compensation
job delivered more than once: every completed step with an undo is compensated exactly
once in the history (its body may run again: at least once, like a step's), last step
first, and on_failure runs once, after the last one.
"""

from __future__ import annotations

import pytest

from sequence.engine.rq.dispatch import UNDO, enqueue_step, get_queue
from sequence.engine.states import Outcome, Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops import faults
from sequence.ops.worker import build_worker
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import Saga

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

FAILED = {Status.FAILED}


def compensations(seq_id: int) -> list[tuple[str, str]]:
    rows = StepAttempt.objects.filter(
        sequence_id=seq_id, outcome__in=[Outcome.COMPENSATED, Outcome.COMPENSATION_FAILED]
    ).order_by("id")
    return [(r.step, r.outcome) for r in rows]


def on_failure_runs(seq_id: int) -> int:
    return Ledger.objects.filter(sequence_id=seq_id, step="on_failure").count()


def to_compensating(seq_id: int) -> SequenceRecord:
    """Run jobs in this process until the sequence is compensating, its first undo queued."""
    worker = build_worker(["default"])
    for _ in range(10):
        record = SequenceRecord.objects.get(pk=seq_id)
        if record.status == Status.COMPENSATING:
            return record
        worker.work(burst=True, max_jobs=1)
    raise AssertionError(f"sequence {seq_id} never started compensating")


def test_a_worker_killed_during_a_compensation_loses_none(fleet):
    seqs = [Saga.start({"undo_sleep": 2.5}) for _ in range(3)]
    ids = [s.id for s in seqs]
    fleet.start(2)
    # Both workers are inside a slow compensation (Second's) of some sequence: kill them.
    wait_for(lambda: Ledger.objects.filter(step="Second.undo").count() >= 2, timeout=40)
    for proc in fleet.alive():
        fleet.kill_all_of(proc)
    fleet.start(2)
    settle(ids, timeout=90, done=FAILED)
    report = check("15 worker killed mid-compensation", ids, expect=FAILED, faults={"killed": 2})
    assert_ok(report)
    for seq_id in ids:
        assert compensations(seq_id) == [
            ("Second", Outcome.COMPENSATED),
            ("First", Outcome.COMPENSATED),
        ]
        assert on_failure_runs(seq_id) == 1
    lost = StepAttempt.objects.filter(sequence_id__in=ids, outcome=Outcome.LOST).count()
    assert lost >= 2  # the killed compensations, taken back by the sweep


def test_a_compensation_job_lost_with_redis_is_queued_again(fleet, redis_db):
    ids = []
    for _ in range(3):
        seq = Saga.start({})
        ids.append(seq.id)
        to_compensating(seq.id)
        assert len(get_queue("default").get_job_ids()) == 1  # its first compensation
        redis_db.flushdb()  # ... is gone
    fleet.start()
    settle(ids, timeout=60, done=FAILED)
    assert_ok(check("15 compensation job lost", ids, expect=FAILED, faults={"flushdb": 1}))
    for seq_id in ids:
        assert compensations(seq_id) == [
            ("Second", Outcome.COMPENSATED),
            ("First", Outcome.COMPENSATED),
        ]
        assert on_failure_runs(seq_id) == 1


def test_a_compensation_job_delivered_many_times_is_recorded_once(fleet):
    seq = Saga.start({})
    record = to_compensating(seq.id)
    index, epoch = record.undo_index, record.epoch
    spec = Saga.step_named(record.plan[index])
    for _ in range(3):  # duplicates in RQ, as a requeue or a double dispatch makes them
        enqueue_step(seq.id, index, epoch, "default", spec, kind=UNDO)
    # ... and stale deliveries straight to the runner, before and after it ran.
    faults.deliver(seq.id, index, epoch - 1, kind=UNDO, worker="stale")
    fleet.start(2)
    settle([seq.id], timeout=60, done=FAILED)
    faults.deliver(seq.id, index, epoch, kind=UNDO, worker="late")
    assert_ok(check("15 duplicate compensation jobs", [seq.id], expect=FAILED, faults={"dup": 4}))
    assert compensations(seq.id) == [
        ("Second", Outcome.COMPENSATED),
        ("First", Outcome.COMPENSATED),
    ]
    assert Ledger.objects.filter(sequence_id=seq.id, step="Second.undo").count() == 1
    assert on_failure_runs(seq.id) == 1
