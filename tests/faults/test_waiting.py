"""Fault 16: sleeps and waits survive what a step survives.

Redis flushed during a sleep, no worker at the wake-up time, a worker killed right after
it committed a wake-up, wake-ups racing each other, and events racing the sequence: every
sequence wakes once, consumes one event, and completes.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from sequence import Sequence
from sequence.engine.states import Status
from sequence.engine.waiting import wake_due
from sequence.models import SequenceEvent, SequenceRecord, StepAttempt
from sequence.ops import faults
from testproject.testapp.models import Journal
from testproject.testapp.sequences import Approval, Snooze, SnoozeUntil

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import session_members, settle, statuses

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


def all_in(ids, status) -> bool:
    return set(statuses(ids).values()) == {status}


def woken_once(ids) -> None:
    for seq_id in ids:
        wakes = Journal.objects.filter(
            seq_id=seq_id, old_status=Status.SLEEPING, new_status=Status.PENDING
        ).count()
        assert wakes == 1, f"#{seq_id} woke {wakes} times"


def test_redis_flushed_during_a_sleep_loses_no_wake_up(fleet, redis_db):
    ids = [Snooze.start({}).id for _ in range(10)]
    fleet.start(2)
    wait_for(lambda: all_in(ids, Status.SLEEPING), timeout=40)
    redis_db.flushdb()
    settle(ids, timeout=60)
    assert_ok(check("16 Redis flushed mid-sleep", ids, faults={"flushdb": 1}))
    woken_once(ids)


def test_a_wake_up_due_while_no_worker_runs_happens_later(fleet):
    ids = [Snooze.start({}).id for _ in range(6)]
    fleet.start()
    wait_for(lambda: all_in(ids, Status.SLEEPING), timeout=40)
    for proc in fleet.alive():
        fleet.kill_all_of(proc)
    wake_at = max(SequenceRecord.objects.filter(pk__in=ids).values_list("wake_at", flat=True))
    wait_for(lambda: timezone.now() > wake_at, timeout=10)
    assert all_in(ids, Status.SLEEPING)  # nobody woke them: no timer anywhere else
    faults.sweep()  # `sequence recover`, or the next worker, wakes them
    assert all_in(ids, Status.PENDING)
    fleet.start()
    settle(ids, timeout=60)
    assert_ok(check("16 no worker at wake-up time", ids, faults={"workers_killed": 1}))
    woken_once(ids)


def test_a_worker_killed_right_after_a_wake_up_loses_nothing(fleet, tmp_path):
    ids = [Snooze.start({}).id for _ in range(4)]
    once = str(tmp_path / "once")
    points = {"after_wake": {"do": "crash", "once": once}}
    fleet.start(env={"SEQUENCE_TEST_POINTS": json.dumps(points)})
    # The armed worker wakes them (nobody else does yet) and dies before queueing.
    wait_for(lambda: (tmp_path / "once").exists(), timeout=40, message="the crash")
    fleet.start()
    settle(ids, timeout=90)
    assert_ok(check("16 killed after a wake-up", ids, faults={"killed_after_wake": 1}))
    woken_once(ids)


def test_wake_passes_racing_each_other_wake_each_sequence_once():
    ids = [Snooze.start({}).id for _ in range(20)]
    from tests.lifecycle_support import run_jobs

    run_jobs()
    wait_for(lambda: all_in(ids, Status.SLEEPING), timeout=20)
    SequenceRecord.objects.filter(pk__in=ids).update(wake_at=timezone.now())
    barrier = threading.Barrier(6)
    woken = []

    def pass_() -> None:
        try:
            barrier.wait()
            woken.append(wake_due())
        finally:
            connection.close()

    threads = [threading.Thread(target=pass_) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(woken) == len(ids)
    assert all_in(ids, Status.PENDING)
    woken_once(ids)


def test_events_racing_each_other_and_the_sequence_are_each_consumed_once(fleet):
    ids = [Approval.start({"sleep": 0.2}).id for _ in range(8)]
    fleet.start(2)
    barrier = threading.Barrier(4)

    def sender(n: int) -> None:
        try:
            barrier.wait()
            for seq_id in ids:
                # Two senders share each id (a redelivered webhook), two have their own.
                Sequence.get(seq_id).send("approved", {"by": n}, id=f"{seq_id}-{n % 3}")
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    settle(ids, timeout=60)
    assert_ok(check("16 racing events", ids, faults={"senders": 4}))
    for seq_id in ids:
        events = SequenceEvent.objects.filter(sequence_id=seq_id)
        assert events.count() == 3  # ids n % 3: 0, 1, 2
        assert events.filter(consumed_at__isnull=False).count() == 1


# -- on django-rq's rqworker, whose only timer is the wake-up job RQ's scheduler holds ------

RQWORKER = (
    "default", "--with-scheduler",
    "--serializer", "rq.serializers.JSONSerializer",
    "--job-class", "sequence.jobs.SequenceJob",
)  # fmt: skip
# tests/test_rqworker.py's bound: RQ's scheduler moves a due job within about 2 s.
WAKE_BOUND = 3.0


def _sleepers(n: int, seconds: float) -> list[int]:
    at = (timezone.now() + timedelta(seconds=seconds)).isoformat()
    return [SnoozeUntil.start({"wake_at": at}).id for _ in range(n)]


def _wake_times(ids) -> dict[int, datetime]:
    wait_for(lambda: all_in(ids, Status.SLEEPING), timeout=30)
    return dict(SequenceRecord.objects.filter(pk__in=ids).values_list("id", "wake_at"))


def _lateness(due: dict[int, datetime]) -> list[float]:
    """Seconds from each ``due`` time to the start of the step after the sleep."""
    woke = dict(
        StepAttempt.objects.filter(sequence_id__in=list(due), step="B").values_list(
            "sequence_id", "started_at"
        )
    )
    return [(woke[pk] - at).total_seconds() for pk, at in due.items()]


def _scheduler_of(workers, redis):
    """The rqworker whose session runs RQ's scheduler for the queue (it holds the lock)."""
    name = redis.get("rq:scheduler-lock:default")
    pid = name and redis.hget(f"rq:scheduler:{name.decode()}", "pid")
    for proc in workers:
        if pid and int(pid) in session_members(proc.pid):
            return proc
    return None


def test_an_rqworker_killed_while_sequences_sleep_a_new_one_wakes_them_on_time(fleet, redis_db):
    workers = [fleet.rqworker(*RQWORKER, env=fleet.base_env) for _ in range(2)]
    wait_for(lambda: _scheduler_of(workers, redis_db), timeout=30, message="RQ's scheduler")
    ids = _sleepers(6, seconds=5)
    due = _wake_times(ids)
    # Killed with all its processes: the worker that does not run RQ's scheduler, which
    # holds the wake-up jobs (see the next test for the other one).
    victim = next(w for w in workers if w is not _scheduler_of(workers, redis_db))
    fleet.kill_all_of(victim)
    victim.wait(timeout=10)
    fleet.rqworker(*RQWORKER, env=fleet.base_env)  # in its place
    settle(ids, timeout=60, done={Status.COMPLETED}, sweep=False)
    late = _lateness(due)
    assert max(late) < WAKE_BOUND, late
    assert_ok(check("16 rqworker killed mid-sleep", ids, faults={"workers_killed": 1}))
    woken_once(ids)
