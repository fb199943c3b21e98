"""Fault 7: a worker stopped with SIGSTOP wakes after another worker took its step over:
its heartbeat and its late commit are fenced, and the step is recorded once."""

from __future__ import annotations

import json
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from sequence.models import SequenceRecord, StepAttempt
from sequence.ops import faults
from testproject.testapp.faults import BeatingChain, FaultChain
from testproject.testapp.models import BodyRun

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def test_a_stopped_workers_heartbeat_is_fenced_after_a_takeover(fleet):
    seq = BeatingChain.start({"beats": 15})
    workers = fleet.start(2)
    run = wait_for(lambda: BodyRun.objects.filter(step="Beating").first(), timeout=30)
    stopped = next(p for p in workers if p.pid == run.pid)
    fleet.kill_all_of(stopped, signal.SIGSTOP)
    # Its beats stop; the other worker's sweep takes the step over and runs it.
    wait_for(
        lambda: SequenceRecord.objects.get(pk=seq.id).step_index >= 2, timeout=40,
        message="the other worker to finish the step",
    )  # fmt: skip
    fleet.kill_all_of(stopped, signal.SIGCONT)
    wait_for(
        lambda: BodyRun.objects.filter(step="Beating", pid=run.pid, note="fenced").exists(),
        timeout=20, message="the woken worker's heartbeat to be fenced",
    )  # fmt: skip
    settle([seq.id], timeout=30)
    done = StepAttempt.objects.get(sequence_id=seq.id, step="Beating", outcome="succeeded")
    assert done.worker != StepAttempt.objects.get(sequence_id=seq.id, outcome="lost").worker
    assert_ok(check("7 SIGSTOP mid-step, heartbeat fenced", [seq.id], faults={"sigstop": 1}))


def test_a_stopped_workers_late_commit_is_fenced_after_a_takeover(fleet, tmp_path):
    seq = FaultChain.start({})
    points = {"before_commit": {"do": "stop", "step": 0, "once": str(tmp_path / "stop")}}
    first = fleet.start(env={"SEQUENCE_TEST_POINTS": json.dumps(points)})[0]
    wait_for(lambda: _state(first.pid) == "T", timeout=30, message="the worker to stop itself")
    fleet.start()  # takes the step over once the stopped worker's beats lapse
    wait_for(lambda: SequenceRecord.objects.get(pk=seq.id).step_index >= 1, timeout=40)
    fleet.kill_all_of(first, signal.SIGCONT)  # it commits late: fenced
    settle([seq.id], timeout=30)
    wait_for(lambda: "lost its claim" in fleet.output(), timeout=20)
    runs = BodyRun.objects.filter(seq_id=seq.id, step="Work")
    assert runs.count() == 2
    assert StepAttempt.objects.get(sequence_id=seq.id, step="Work", outcome="succeeded").worker != (
        StepAttempt.objects.get(sequence_id=seq.id, step="Work", outcome="lost").worker
    )
    assert_ok(check("7 SIGSTOP before commit, late commit fenced", [seq.id], faults={"sigstop": 1}))


def test_a_late_commit_and_heartbeat_after_the_lease_ran_out_are_fenced(settings):
    """In one process, the database clock moved past the lease instead of waiting for it."""
    settings.SEQUENCE_WORKER_HEARTBEAT = 0
    plain, beating = FaultChain.start({}), BeatingChain.start({"beats": 3})

    def expire_and_take_over(context):
        SequenceRecord.objects.filter(pk=context["sequence"]).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )
        assert context["sequence"] in faults.sweep().redispatched
        record = SequenceRecord.objects.get(pk=context["sequence"])
        quiet = (
            faults.armed("heartbeat", lambda c: None),
            faults.armed("before_commit", lambda c: None),
        )
        with quiet[0], quiet[1]:
            faults.deliver(record.pk, record.step_index, record.epoch, worker="successor")

    with faults.armed("before_commit", expire_and_take_over, sequence=plain.id, step=0):
        faults.deliver(plain.id, 0, 0, worker="late")
    done = StepAttempt.objects.get(sequence_id=plain.id, step="Work", outcome="succeeded")
    assert done.worker == "successor"
    faults.deliver(beating.id, 0, 0, worker="first")
    record = SequenceRecord.objects.get(pk=beating.id)
    with faults.armed("heartbeat", expire_and_take_over, sequence=beating.id, step=1):
        faults.deliver(beating.id, 1, record.epoch, worker="late")
    assert BodyRun.objects.filter(seq_id=beating.id, step="Beating", note="fenced").count() == 1
    for seq in (plain, beating):
        record = SequenceRecord.objects.get(pk=seq.id)
        while record.status != "completed":
            faults.deliver(record.pk, record.step_index, record.epoch, worker="finisher")
            record.refresh_from_db()
    assert_ok(
        check(
            "7 lease ran out: late commit and heartbeat fenced", [plain.id, beating.id],
            faults={"leases_expired": 2},
        )
    )  # fmt: skip
