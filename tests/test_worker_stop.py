"""Workers stop on time: idle, busy, twice signalled and in burst mode, both classes.

The bounds are API.md's ("Workers"): an idle worker exits within 2 s of SIGTERM or
SIGINT; a busy one finishes its step, commits it and exits within 2 s after; a second
signal stops it at once, its step recovered as a killed worker's; ``--burst`` exits
within 2 s of finding its queues empty. The hang these guard against was intermittent
(RQ's pub/sub thread waiting up to 60 s once unsubscribed, with redis-py 8.2), so each
bound is measured several times. Every process is started by the ``workers`` fixture,
which kills it by pid at teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from django.db.models import Max

from sequence.models import SequenceRecord, StepAttempt, WorkerBeat
from sequence.ops.worker import PUBSUB_READ, build_worker
from testproject.testapp.sequences import ThreeSteps
from tests.conftest import wait_exit, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

# API.md's bound, seconds.
BOUND = 2.0
REPEAT = 3
KINDS = ["simple", "fork"]


def _idle(workers, kind: str) -> subprocess.Popen[bytes]:
    """A worker that has run a sequence and is idle again."""
    proc = workers.start(kind=kind)[0]
    ThreeSteps.start({}).wait(30)
    wait_for(lambda: WorkerBeat.objects.exists(), message="the worker's registration")
    return proc


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_idle_worker_exits_within_the_bound(workers, redis_db, kind, sig):
    took = []
    for _ in range(REPEAT):
        proc = _idle(workers, kind)
        os.kill(proc.pid, sig)
        took.append(wait_exit(proc, f"idle {kind} worker after {sig.name}"))
        assert proc.returncode == 0
        # Its scheduler's lock is gone with it: the next worker's scheduler starts at once.
        assert not redis_db.exists("rq:scheduler-lock:default")
    print("stop times", took)
    assert max(took) < BOUND, f"stop times {took}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_busy_worker_commits_its_step_then_exits_within_the_bound(workers, kind):
    for _ in range(REPEAT):
        proc = workers.start(kind=kind)[0]
        seq = ThreeSteps.start({"sleep": 1.5})
        wait_for(
            lambda s=seq: SequenceRecord.objects.filter(pk=s.id, status="running").exists(),
            message="step 1 running",
        )
        os.kill(proc.pid, signal.SIGTERM)
        wait_exit(proc, f"busy {kind} worker")
        exited = time.time()
        assert proc.returncode == 0
        seq.refresh()
        # Step 1 was committed, and nothing after it ran here: the next one waits, queued.
        assert (seq.status, seq.step_index) == ("pending", 1), workers.output()
        done = StepAttempt.objects.filter(sequence_id=seq.id, outcome="succeeded")
        committed = done.aggregate(at=Max("finished_at"))["at"]
        assert done.count() == 1
        assert exited - committed.timestamp() < BOUND
        seq.cancel()  # its queued step 2 must not busy the next round's worker


@pytest.mark.parametrize("kind", KINDS)
def test_a_second_signal_stops_a_busy_worker_at_once_and_its_step_is_recovered(workers, kind):
    seq = ThreeSteps.start({"sleep": 30})
    for attempt in range(2):  # within SEQUENCE_MAX_RECOVERIES
        proc = workers.start(kind=kind, env={"SEQUENCE_RECOVER_INTERVAL": "1"})[0]
        wait_for(
            lambda n=attempt + 1: SequenceRecord.objects.filter(
                pk=seq.id, status="running", attempt=n
            ).exists(),
            timeout=60,
            message=f"attempt {attempt + 1} of step 1 running",
        )
        os.kill(proc.pid, signal.SIGTERM)
        time.sleep(1.1)  # RQ ignores a second signal within a second of the first
        os.kill(proc.pid, signal.SIGTERM)
        assert wait_exit(proc, f"busy {kind} worker, signalled twice") < BOUND
        # A later worker takes the step over, as from a killed worker.
    seq.refresh()
    assert seq.status in ("running", "retrying", "pending")
    SequenceRecord.objects.filter(pk=seq.id).update(data={})
    workers.start(kind=kind)
    wait_for(
        lambda: SequenceRecord.objects.filter(pk=seq.id, status="completed").exists(),
        timeout=90,
        message="the sequence completed after its step was recovered",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_a_burst_worker_exits_within_the_bound_of_its_queues_emptying(workers, kind):
    for _ in range(REPEAT):
        seq = ThreeSteps.start({})
        proc = workers.start(kind=kind, burst=True)[0]
        wait_exit(proc, f"burst {kind} worker")
        exited = time.time()
        seq.refresh()
        assert seq.status == "completed", workers.output()
        finished = SequenceRecord.objects.get(pk=seq.id).finished_at
        assert exited - finished.timestamp() < BOUND


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_thread_stops_within_one_short_read_even_once_unsubscribed(kind):
    # The hang, made certain: the thread has already seen its subscription end and waits
    # for a new one. RQ's own reads wait 60 s there, and redis-py 8.2's stop() waits too.
    worker = build_worker(["default"], kind=kind)
    took = []
    for _ in range(5):
        worker.subscribe()
        thread = worker.pubsub_thread
        worker.pubsub.unsubscribe()
        wait_for(lambda: not worker.pubsub.subscribed, timeout=5, message="unsubscribed")
        time.sleep(2 * PUBSUB_READ)  # the thread is back in its wait
        start = time.monotonic()
        worker.unsubscribe()
        took.append(time.monotonic() - start)
        assert not thread.is_alive()
    assert max(took) < 2 * PUBSUB_READ + 0.2, took
