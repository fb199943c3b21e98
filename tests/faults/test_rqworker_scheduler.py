"""Fault 16b: django-rq's rqworker killed with RQ's scheduler while sequences sleep.

Under ``rqworker`` the only timer of a sleep is the wake-up job RQ's scheduler holds. A
worker killed with its scheduler leaves RQ's scheduler lock behind for up to 60 s, so
this test mostly waits that out: it runs once, in the pass of the worker-process tests
(the Makefile's ``WORKER_TESTS``), not on every database and version.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from sequence.engine.states import Status

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle
from .test_waiting import (
    RQWORKER,
    WAKE_BOUND,
    _lateness,
    _sleepers,
    _wake_times,
    all_in,
    woken_once,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


@pytest.mark.slow
def test_an_rqworker_killed_with_its_scheduler_leaves_the_wake_ups_to_a_later_worker(
    fleet, redis_db
):
    first = fleet.rqworker(*RQWORKER, env=fleet.base_env)
    ids = _sleepers(5, seconds=3)
    _wake_times(ids)
    fleet.kill_all_of(first)  # the worker, its horse and RQ's scheduler
    first.wait(timeout=10)
    # RQ's scheduler lock outlives a killed holder by up to 60 s, and a worker started
    # meanwhile does not look for it again before RQ's maintenance (10 minutes).
    wait_for(
        lambda: not redis_db.exists("rq:scheduler-lock:default"),
        timeout=75,
        message="RQ's scheduler lock expired",
    )
    assert all_in(ids, Status.SLEEPING)  # overdue: no sweep runs, no worker's wake pass
    started = timezone.now()
    fleet.rqworker(*RQWORKER, env=fleet.base_env)
    # The wake-up jobs were kept in Redis: the new worker's scheduler queues them at once.
    settle(ids, timeout=60, done={Status.COMPLETED}, sweep=False)
    late = _lateness(dict.fromkeys(ids, started))
    assert max(late) < WAKE_BOUND + 5, late  # with the worker's start-up
    assert_ok(
        check("16 rqworker and its scheduler killed mid-sleep", ids, faults={"workers_killed": 1})
    )
    woken_once(ids)
