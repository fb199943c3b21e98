"""Faults 3 and 4: the outbox. A crash between commit and enqueue loses nothing, and a
job can never run ahead of the commit that made it due."""

from __future__ import annotations

import json
import time

import pytest

from sequence.engine.rq.dispatch import enqueue_step, get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops import faults
from testproject.testapp.faults import FaultChain
from testproject.testapp.models import BodyRun, Effect

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.mark.parametrize("kind", ["simple", "fork"])
def test_crash_after_commit_before_enqueue_is_recovered_by_the_sweep_alone(fleet, tmp_path, kind):
    crash = tmp_path / "crash"
    points = {"after_commit": {"do": "crash", "step": 1, "once": str(crash), "times": 3}}
    no_sweep = {"SEQUENCE_RECOVER_INTERVAL": "0", "SEQUENCE_TEST_POINTS": json.dumps(points)}
    seqs = [FaultChain.start({}) for _ in range(3)]
    ids = [s.id for s in seqs]
    proc = fleet.start(env=no_sweep, kind=kind)[0]

    def all_stuck_after_step_1():
        nonlocal proc
        if proc.poll() is not None:  # it crashed at the test point: start another
            proc = fleet.start(env=no_sweep, kind=kind)[0]
        rows = SequenceRecord.objects.filter(pk__in=ids)
        return all(r.step_index == 2 and r.status == Status.PENDING for r in rows)

    wait_for(all_stuck_after_step_1, timeout=60, message="three crashes after commit")
    assert len(list(tmp_path.glob("crash*"))) == 3
    time.sleep(2.5)  # past the dispatch grace: with no sweep, nothing moves
    rows = list(SequenceRecord.objects.filter(pk__in=ids))
    assert all(r.step_index == 2 and r.dispatch_due is not None for r in rows)
    queue = get_queue("default")
    assert all(queue.fetch_job(job_id(r.pk, 2, r.epoch)) is None for r in rows)
    assert Effect.objects.filter(seq_id__in=ids).count() == 3  # step 1 ran and committed once

    # A forking worker saw its horse die after the commit: that changed nothing.
    assert not StepAttempt.objects.filter(sequence_id__in=ids, outcome="lost").exists()
    if proc.poll() is not None:
        fleet.start(env=no_sweep, kind=kind)
    result = faults.sweep(grace=1)
    assert sorted(result.redispatched) == sorted(ids)
    settle(ids, sweep=False, timeout=30)
    report = check(
        f"3 crash after commit, before enqueue ({kind} workers)", ids,
        faults={"crashes_after_commit": 3, "sweeps": 1},
    )  # fmt: skip
    assert_ok(report)
    assert Effect.objects.filter(seq_id__in=ids).count() == 3  # not re-run
    assert BodyRun.objects.filter(seq_id__in=ids, step="Pay").count() == 3  # next step once


def test_a_job_forged_for_an_uncommitted_epoch_does_nothing(fleet, tmp_path):
    hold = tmp_path / "hold"
    points = {"before_commit": {"do": f"hold:{hold}", "step": 0}}
    seq = FaultChain.start({})
    # Forged jobs for every epoch and step the row has not committed yet.
    for step, epoch in [(1, 1), (1, 0), (0, 1), (2, 2), (3, 7)]:
        enqueue_step(seq.id, step, epoch, "default", FaultChain.step_specs[step])
    fleet.start(2, env={"SEQUENCE_TEST_POINTS": json.dumps(points)})
    wait_for(lambda: (tmp_path / "hold.reached").exists(), timeout=30)
    # Step 0 ran and waits before its commit: nothing for step 1 is queued, and the
    # forged jobs found nothing to do.
    wait_for(lambda: get_queue("default").count == 0, timeout=30)
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index, record.epoch) == (Status.RUNNING, 0, 0)
    assert get_queue("default").fetch_job(job_id(seq.id, 1, 1)) is None or (
        get_queue("default").fetch_job(job_id(seq.id, 1, 1)).get_status() != "queued"
    )
    assert BodyRun.objects.filter(seq_id=seq.id).count() == 1
    (tmp_path / "hold.release").touch()
    settle([seq.id], timeout=30, sweep=False)
    assert_ok(check("4 forged jobs for uncommitted epochs", [seq.id], faults={"forged_jobs": 5}))
    assert BodyRun.objects.filter(seq_id=seq.id, step="Work").count() == 1
