"""Fault 16: sleeps and waits survive what a step survives.

Redis flushed during a sleep, no worker at the wake-up time, a worker killed right after
it committed a wake-up, wake-ups racing each other, and events racing the sequence: every
sequence wakes once, consumes one event, and completes.
"""

from __future__ import annotations

import json
import threading

import pytest
from django.db import connection
from django.utils import timezone

from sequence import Sequence, faults
from sequence.models import SequenceEvent, SequenceRecord
from sequence.states import Status
from sequence.waiting import wake_due
from testproject.testapp.models import Journal
from testproject.testapp.sequences import Approval, Snooze

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle, statuses

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
