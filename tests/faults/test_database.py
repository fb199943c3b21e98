"""Fault 10: the database connection dies under a running step, and a commit succeeds
but the worker never hears so."""

from __future__ import annotations

import json
import time

import pytest
from django.db import connection

from testproject.testapp.faults import FaultChain, OutageChain
from testproject.testapp.models import BodyRun, Effect

from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

TERMINATE_OTHERS = """
    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates PostgreSQL backends")
def test_postgresql_connections_terminated_mid_step(fleet):
    ids = [OutageChain.start({"sleep": [0.1, 0.3]}).id for _ in range(20)]
    fleet.start(2)
    fleet.start(kind="fork")
    terminated = rounds = 0
    end = time.monotonic() + 8
    time.sleep(1)
    while time.monotonic() < end:
        with connection.cursor() as cursor:
            cursor.execute(TERMINATE_OTHERS)
            terminated += cursor.fetchone()[0]
        rounds += 1
        time.sleep(0.5)
    settle(ids, timeout=90)
    assert_ok(
        check(
            "10 PostgreSQL connections terminated mid-step", ids,
            faults={"termination_rounds": rounds, "backends_terminated": terminated},
        )
    )  # fmt: skip


def test_a_commit_whose_acknowledgement_is_lost_is_not_run_again(fleet, tmp_path):
    ids = [FaultChain.start({}).id for _ in range(5)]
    points = {"commit_ack": {"do": "error", "step": 1, "once": str(tmp_path / "ack"), "times": 3}}
    fleet.start(2, env={"SEQUENCE_TEST_POINTS": json.dumps(points)})
    settle(ids, timeout=60)
    assert len(list(tmp_path.glob("ack*"))) == 3
    # The atomic step committed once and was not run again; its successor ran once.
    assert Effect.objects.filter(seq_id__in=ids).count() == 5
    assert BodyRun.objects.filter(seq_id__in=ids, step="Pay").count() == 5
    assert_ok(check("10 commit acknowledgement lost", ids, faults={"lost_acks": 3}))
