"""Faults 8 and 9: Redis loses what it holds, or cannot be reached when a step is
dispatched. The database row is the truth: the sweep queues every lost step again."""

from __future__ import annotations

import json
import time

import pytest
import redis.exceptions

from sequence.engine.rq.dispatch import get_queue
from testproject.testapp.faults import FaultChain
from testproject.testapp.models import BodyRun, Effect

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


def _start(n):
    return [FaultChain.start({"sleep": [0.02, 0.1]}).id for _ in range(n)]


def test_redis_flushed_mid_run(fleet, redis_db):
    ids = _start(30)
    fleet.start(2)
    fleet.start(kind="fork")
    flushes = 0
    for pause in (1.0, 1.5):
        time.sleep(pause)
        redis_db.flushdb()
        flushes += 1
    settle(ids, timeout=90)
    assert_ok(check("8 Redis flushed mid-run", ids, faults={"flushdb": flushes}))


def test_redis_killed_and_restarted_empty(fleet, private_redis):
    server = private_redis(persistent=False)
    ids = _start(30)
    fleet.start(2, env={"REDIS_URL": server.url})
    fleet.start(kind="fork", env={"REDIS_URL": server.url})
    time.sleep(1.5)
    server.kill()
    time.sleep(2)
    server.start()  # same port, nothing in it
    settle(ids, timeout=120)
    assert_ok(check("8 Redis killed, restarted empty", ids, faults={"redis_kill_restart": 1}))


def test_redis_unreachable_when_the_next_step_is_dispatched(fleet, private_redis, tmp_path):
    server = private_redis(persistent=True)
    ids = _start(10)
    hold = tmp_path / "hold"
    points = {"after_commit": {"do": f"hold:{hold}", "step": 1, "once": str(tmp_path / "once")}}
    env = {"REDIS_URL": server.url, "SEQUENCE_TEST_POINTS": json.dumps(points)}
    fleet.start(env=env)
    wait_for(lambda: (tmp_path / "hold.reached").exists(), timeout=40)
    held = BodyRun.objects.filter(step="Work").order_by("-id").first().seq_id
    server.kill()  # the committed step's successor cannot be queued now
    (tmp_path / "hold.release").touch()
    wait_for(lambda: "Could not queue step 2" in fleet.output(), timeout=30)
    time.sleep(3)
    server.start()  # back, with what it had (append-only file)
    wait_for(_loaded, timeout=30, message="Redis to load its append-only file")
    assert get_queue("default").count > 0
    settle(ids, timeout=90)
    assert Effect.objects.filter(seq_id=held).count() == 1
    assert BodyRun.objects.filter(seq_id=held, step="Pay").count() == 1
    assert_ok(check("9 Redis unreachable at dispatch", ids, faults={"redis_down_seconds": 3}))


def _loaded() -> bool:
    """Whether the restarted server answers (it refuses with BusyLoadingError while it
    reads its append-only file back)."""
    try:
        return bool(get_queue("default").connection.ping())
    except redis.exceptions.BusyLoadingError:
        return False
