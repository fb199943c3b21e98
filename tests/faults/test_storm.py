"""Fault 1: a SIGKILL storm. Hundreds of sequences on several workers; a random worker
(its whole session: worker, scheduler, work-horse) is killed every fraction of a second
and replaced; then a sweep; every sequence completes, every step recorded once."""

from __future__ import annotations

import random
import time

import pytest

from testproject.testapp.faults import FaultChain

from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240), pytest.mark.slow]

SEQUENCES = 200
STORM_SECONDS = 20
KILL_EVERY = 0.5


def test_sigkill_storm_loses_no_sequence_and_records_every_step_once(fleet):
    ids = [FaultChain.start({"sleep": [0.01, 0.08]}).id for _ in range(SEQUENCES)]
    kinds = {}
    for kind in ("simple", "simple", "fork", "fork"):
        kinds[fleet.start(kind=kind)[0].pid] = kind
    rng = random.Random(1)
    end = time.monotonic() + STORM_SECONDS
    while time.monotonic() < end:
        time.sleep(KILL_EVERY * rng.uniform(0.5, 1.5))
        victim = rng.choice(fleet.alive())
        replacement = fleet.replace(victim, kind=kinds[victim.pid])
        kinds[replacement.pid] = kinds[victim.pid]
    settle(ids, timeout=150)
    report = check(
        "1 SIGKILL storm", ids,
        faults={"workers_killed": fleet.kills, "storm_seconds": STORM_SECONDS, "workers": 4},
    )  # fmt: skip
    assert_ok(report)


def test_sigkill_storm_with_inline_steps_loses_and_doubles_nothing(fleet):
    """The same storm on workers that run up to four next steps inline in each job."""
    ids = [FaultChain.start({"sleep": [0.01, 0.08]}).id for _ in range(SEQUENCES // 2)]
    inline = {"SEQUENCE_INLINE_STEPS": "4"}
    fleet.start(3, env=inline)
    rng = random.Random(2)
    end = time.monotonic() + STORM_SECONDS / 2
    while time.monotonic() < end:
        time.sleep(KILL_EVERY * rng.uniform(0.5, 1.5))
        fleet.replace(rng.choice(fleet.alive()), env=inline)
    settle(ids, timeout=150)
    report = check(
        "1b SIGKILL storm, inline steps", ids,
        faults={"workers_killed": fleet.kills, "storm_seconds": STORM_SECONDS / 2, "workers": 3},
    )  # fmt: skip
    assert_ok(report)
