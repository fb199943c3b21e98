"""django-rq's ``rqworker`` set up as docs/workers.md says, with nothing else running.

It stops on time when given sequence's worker class (API.md, "Workers": an idle worker
exits within 2 s of SIGTERM, a burst worker within 2 s of its queues emptying; RQ's own
classes may wait a minute there with redis-py 8.2, intermittently, so each bound is
measured several times). And it wakes sleeps and times out waits on time without
``sequence worker`` or ``sequence recover``: each Sleep or WaitFor deadline schedules a
job with RQ's scheduler, which ``--with-scheduler`` runs. Every process is started by the
``workers`` fixture, which kills it by pid at teardown.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.db.models import Max
from django.utils import timezone
from rq import Worker

from sequence.engine import steering
from sequence.engine.rq.dispatch import WAKE, delete_jobs, get_queue, job_id
from sequence.engine.rq.wakes import WAKE_JOB_GRACE
from sequence.engine.states import Status
from sequence.engine.waiting import wake_due
from sequence.models import SequenceRecord, StepAttempt
from sequence.runner import run_step
from testproject.testapp.sequences import (
    ApprovalOrOnward,
    ApprovalOrUndo,
    Snooze,
    SnoozeUntil,
    ThreeSteps,
)

from .conftest import wait_exit, wait_for
from .lifecycle_support import run_jobs
from .redis_server import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

# The command docs/workers.md gives, and the worker classes it recommends adding to it.
RQWORKER = (
    "default", "--with-scheduler",
    "--serializer", "rq.serializers.JSONSerializer",
    "--job-class", "sequence.jobs.SequenceJob",
)  # fmt: skip
CLASSES = ["sequence.ops.worker.SequenceWorker", "sequence.ops.worker.ForkingSequenceWorker"]

# API.md's stop bound, seconds.
BOUND = 2.0
REPEAT = 3
# Seconds after its time within which a sleep or a wait's timeout moves on: RQ's
# scheduler holds whole seconds (the job is due at the next one) and looks once a
# second; then a worker takes the job and the next step's.
WAKE_BOUND = 3.0


def _command(worker_class: str | None, *extra: str) -> tuple[str, ...]:
    return (*RQWORKER, *(("--worker-class", worker_class) if worker_class else ()), *extra)


def _listening(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the rqworker process has registered with RQ and runs its scheduler."""
    connection = get_queue("default").connection
    mine = [w for w in Worker.all(connection=connection) if w.pid == proc.pid]
    return bool(mine) and bool(connection.exists("rq:scheduler-lock:default"))


# -- stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", CLASSES)
def test_an_idle_rqworker_with_sequences_worker_class_exits_within_the_bound(workers, worker_class):
    took = []
    for _ in range(REPEAT):
        proc = workers.rqworker(*_command(worker_class))
        ThreeSteps.start({}).wait(30)
        wait_for(lambda p=proc: _listening(p), timeout=30, message="the worker and its scheduler")
        os.kill(proc.pid, signal.SIGTERM)
        took.append(wait_exit(proc, f"idle rqworker --worker-class {worker_class}", limit=90))
        assert proc.returncode == 0, workers.output()
    print("stop times", took)
    assert max(took) < BOUND, f"stop times {took}"


@pytest.mark.parametrize("worker_class", CLASSES)
def test_a_burst_rqworker_with_sequences_worker_class_exits_within_the_bound(workers, worker_class):
    for _ in range(REPEAT):
        seq = ThreeSteps.start({})
        proc = workers.rqworker(*_command(worker_class, "--burst"))
        wait_exit(proc, f"burst rqworker --worker-class {worker_class}", limit=90)
        exited = time.time()
        assert proc.returncode == 0, workers.output()
        seq.refresh()
        assert seq.status == Status.COMPLETED, workers.output()
        finished = SequenceRecord.objects.get(pk=seq.id).finished_at
        assert exited - finished.timestamp() < BOUND


# -- waking on time -------------------------------------------------------------------------


def _asleep(seq, status: str) -> SequenceRecord:
    found = wait_for(
        lambda: SequenceRecord.objects.filter(pk=seq.id, status=status).first(),
        timeout=30,
        message=f"the sequence {status}",
    )
    assert isinstance(found, SequenceRecord)
    return found


def _started(seq, step: str):
    return StepAttempt.objects.filter(sequence_id=seq.id, step=step).aggregate(
        at=Max("started_at")
    )["at"]


@pytest.mark.parametrize("worker_class", [None, CLASSES[0]], ids=["rq.Worker", "SequenceWorker"])
def test_a_sleep_wakes_on_time_with_only_rqworker_running(workers, redis_db, worker_class):
    workers.rqworker(*_command(worker_class))
    # Up first (a loaded machine can take seconds to start it): the sleep is measured.
    wait_for(lambda: redis_db.scard("rq:workers"), timeout=60, message="the worker up")
    seq = SnoozeUntil.start({"wake_at": (timezone.now() + timedelta(seconds=4)).isoformat()})
    record = _asleep(seq, Status.SLEEPING)
    assert record.wake_at - timezone.now() > timedelta(seconds=2)  # a real sleep
    jid = job_id(seq.id, record.step_index, record.epoch, WAKE)
    # Scheduled at the first whole second from its time, to live a bounded time.
    # Scheduled once the sleep's commit is done (the row shows it a moment before).
    at = wait_for(lambda: redis_db.zscore("rq:scheduled:default", jid), 10, "the wake-up job")
    assert at == math.ceil(record.wake_at.timestamp())
    assert 0 < redis_db.ttl(f"rq:job:{jid}") <= 5 + WAKE_JOB_GRACE
    wait_for(lambda: _started(seq, "B"), timeout=30, message="the step after the sleep")
    late = (_started(seq, "B") - record.wake_at).total_seconds()
    print(f"the step after the sleep started {late:.2f}s after its time")
    assert 0 <= late < WAKE_BOUND, workers.output()
    seq.wait(30)
    assert seq.status == Status.COMPLETED
    # The wake-up job ran and left nothing behind.
    wait_for(lambda: not redis_db.exists(f"rq:job:{jid}"), timeout=5, message="the job gone")
    assert redis_db.zscore("rq:scheduled:default", jid) is None


def test_a_wait_times_out_on_time_with_only_rqworker_running(workers):
    workers.rqworker(*_command(None))
    onward, undo = ApprovalOrOnward.start({}), ApprovalOrUndo.start({})
    deadlines = {seq.id: _asleep(seq, Status.WAITING).wake_at for seq in (onward, undo)}
    # on_timeout="continue": the next step starts on time.
    wait_for(lambda: _started(onward, "B"), timeout=30, message="the step after the wait")
    late = (_started(onward, "B") - deadlines[onward.id]).total_seconds()
    assert 0 <= late < WAKE_BOUND, workers.output()
    onward.wait(30)
    assert onward.status == Status.COMPLETED
    # on_timeout="fail": the wait fails on time, and the compensation runs.
    wait_for(
        lambda: StepAttempt.objects.filter(sequence_id=undo.id, outcome="failed").exists(),
        timeout=30,
        message="the wait timed out",
    )
    failed = StepAttempt.objects.get(sequence_id=undo.id, outcome="failed")
    assert "timed out" in failed.error
    late = (failed.finished_at - deadlines[undo.id]).total_seconds()
    assert 0 <= late < WAKE_BOUND, workers.output()
    wait_for(
        lambda: SequenceRecord.objects.filter(pk=undo.id, status=Status.FAILED).exists(),
        timeout=30,
        message="the sequence failed after its compensation",
    )
    assert StepAttempt.objects.filter(sequence_id=undo.id, outcome="compensated").exists()


# -- the wake-up job, in this process -------------------------------------------------------


def _wake_job(seq) -> tuple[str, list]:
    """The id and arguments of the wake-up job scheduled for the row as it is now."""
    record = SequenceRecord.objects.get(pk=seq.id)
    jid = job_id(seq.id, record.step_index, record.epoch, WAKE)
    job = get_queue("default").fetch_job(jid)
    assert job is not None, f"no job {jid}"
    assert job.get_status() == "scheduled"
    return jid, list(job.args)


def _position(seq) -> tuple[str, int, int]:
    record = SequenceRecord.objects.get(pk=seq.id)
    return record.status, record.step_index, record.epoch


def test_the_wake_up_job_wakes_only_what_is_due_so_early_twice_or_stale_it_does_nothing():
    seq = SnoozeUntil.start({"wake_at": (timezone.now() + timedelta(seconds=2)).isoformat()})
    run_jobs()
    jid, args = _wake_job(seq)
    assert jid == f"seq-{seq.id}-2-2-wake"
    assert args == [seq.id, 2, 2, WAKE]
    asleep = _position(seq)
    run_step(*args)  # early: the row says it is not due yet
    assert _position(seq) == asleep
    wake_at = SequenceRecord.objects.get(pk=seq.id).wake_at
    wait_for(lambda: timezone.now() > wake_at, timeout=5, message="the wake-up time")
    run_step(*args)
    assert _position(seq) == (Status.PENDING, 2, 3)
    run_step(*args)  # twice
    assert _position(seq) == (Status.PENDING, 2, 3)
    run_jobs()
    assert _position(seq)[0] == Status.COMPLETED
    run_step(*args)  # stale
    assert _position(seq)[0] == Status.COMPLETED
    assert StepAttempt.objects.filter(sequence_id=seq.id, step="B").count() == 1


@pytest.mark.parametrize("end", ["wake now", "cancel"])
def test_a_sleep_ended_early_leaves_a_wake_up_job_that_does_nothing(end):
    seq = SnoozeUntil.start({"wake_at": (timezone.now() + timedelta(hours=1)).isoformat()})
    run_jobs()
    _, args = _wake_job(seq)
    if end == "cancel":
        seq.cancel()
    else:
        steering.wake(seq.id)
    after = _position(seq)
    run_step(*args)
    assert _position(seq) == after


def test_a_wait_ended_by_its_event_leaves_a_wake_up_job_that_does_nothing():
    seq = ApprovalOrOnward.start({})
    run_jobs()
    _, args = _wake_job(seq)
    deadline = SequenceRecord.objects.get(pk=seq.id).wake_at
    seq.send("approved", {"ok": True})
    run_jobs()
    assert _position(seq)[0] == Status.COMPLETED
    wait_for(lambda: timezone.now() > deadline, timeout=5, message="the wait's deadline")
    run_step(*args)
    assert _position(seq)[0] == Status.COMPLETED
    assert not StepAttempt.objects.filter(sequence_id=seq.id, outcome="failed").exists()


def test_redis_unreachable_when_a_sleep_begins_leaves_it_to_the_wake_pass(
    settings, redis_db, caplog
):
    seq = Snooze.start({})
    run_step(seq.id, 0, 0)  # step A, here; its commit queues the Sleep
    queues = settings.RQ_QUEUES
    settings.RQ_QUEUES = {
        name: {**options, "URL": f"redis://127.0.0.1:{free_port()}/0"}
        for name, options in queues.items()
    }
    get_queue.cache_clear()
    try:
        run_step(seq.id, 1, 1)  # the Sleep begins; nothing answers on Redis's port
    finally:
        settings.RQ_QUEUES = queues
        get_queue.cache_clear()
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index) == (Status.SLEEPING, 2)
    assert record.wake_at is not None
    assert "Could not schedule the wake-up of sequence" in caplog.text
    assert redis_db.zcard("rq:scheduled:default") == 0
    # The row is the truth: a wake pass (or the sweep) wakes it once it is due.
    wait_for(lambda: wake_due(pk=seq.id), timeout=5, message="a wake-up")
    run_jobs()
    assert _position(seq)[0] == Status.COMPLETED


def test_a_paused_sleep_resumed_before_its_time_is_scheduled_again(redis_db):
    seq = SnoozeUntil.start({"wake_at": (timezone.now() + timedelta(hours=1)).isoformat()})
    run_jobs()
    jid, args = _wake_job(seq)
    due = redis_db.zscore("rq:scheduled:default", jid)
    for resume in (seq.resume, lambda: SnoozeUntil.records().filter(pk=seq.id).resume()):
        seq.pause()
        # Its job came while it was paused (a Redis flush, say, or a pause across its
        # time): it did nothing, and is gone.
        run_step(*args)
        assert _position(seq)[0] == Status.PAUSED
        delete_jobs("default", [jid])
        resume()
        assert _position(seq)[0] == Status.SLEEPING
        assert redis_db.zscore("rq:scheduled:default", jid) == due
        assert _wake_job(seq) == (jid, args)


def test_a_wait_paused_past_its_deadline_times_out_once_resumed(redis_db):
    seq = ApprovalOrOnward.start({})
    run_jobs()
    jid, args = _wake_job(seq)
    seq.pause()
    deadline = SequenceRecord.objects.get(pk=seq.id).wake_at
    wait_for(lambda: timezone.now() > deadline, timeout=5, message="the deadline")
    run_step(*args)  # its job, while paused: nothing
    assert _position(seq)[0] == Status.PAUSED
    seq.resume()
    assert _position(seq)[0] == Status.WAITING
    # Its time has passed: RQ's scheduler queues it at once.
    assert redis_db.zscore("rq:scheduled:default", jid) == math.ceil(deadline.timestamp())
    run_step(*args)
    run_jobs()
    assert _position(seq)[0] == Status.COMPLETED
