"""Fault 6: two processes, each with many threads, deliver the same step at the same
instant, step after step: exactly one claim wins each race, and each step is
recorded once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sequence.engine.rq.dispatch import get_queue
from testproject.testapp.faults import FaultChain
from testproject.testapp.models import Journal

from ..conftest import ROOT, wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

PROCESSES, THREADS, SEQUENCES, ROUNDS = 2, 8, 10, 4


def test_racing_deliveries_of_one_step_claim_it_once(fleet, tmp_path):
    ids = [FaultChain.start({}).id for _ in range(SEQUENCES)]
    start = time.time() + 6  # both processes set up Django first
    env = fleet.env(fleet.base_env)
    racers = []
    for index in range(PROCESSES):
        with (tmp_path / f"racer-{index}.log").open("wb") as log:
            racers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.faults.racer",
                        str(start),
                        str(THREADS),
                        str(ROUNDS),
                        *map(str, ids),
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    fleet.procs.extend(racers)  # killed by pid at teardown, like the workers
    for racer in racers:
        racer.wait(timeout=90)
    logs = "".join(p.read_text() for p in tmp_path.glob("racer-*.log"))
    assert all(r.returncode == 0 for r in racers), logs
    # The winners queued their successors too; a worker runs (or discards) those jobs.
    fleet.start()
    settle(ids, timeout=60, sweep=False)
    wait_for(lambda: get_queue("default").count == 0, timeout=30)
    report = check(
        "6 racing deliveries", ids,
        faults={"processes": PROCESSES, "threads_each": THREADS, "deliveries":
                PROCESSES * THREADS * SEQUENCES * ROUNDS},
    )  # fmt: skip
    assert_ok(report)
    assert report.claims == SEQUENCES * ROUNDS  # one winner per step, nothing ran twice
    by_racers = Journal.objects.filter(
        seq_id__in=ids, new_status="running", claimed_by__startswith="racer-"
    ).exclude(new_token=None)
    assert by_racers.count() == SEQUENCES * ROUNDS  # every race was run, and won once
    assert report.body_reruns == 0
