"""The hand-written statements, each pinned to its count per call.

docs/inside.md ("Hand-written SQL") lists every function that writes SQL by hand, why,
and the test that pins it; the step's claim and commit are pinned in test_transitions.py,
a ForEach element's in test_fanout_cost.py, the admin's counts in test_admin.py. These
run in the test's transaction: nothing reaches Redis but what the sweep reads.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sequence import ForEach, Sequence, Step
from sequence.engine import history
from sequence.engine.states import Status
from sequence.engine.transitions import bulk, elements
from sequence.models import SequenceItem, SequenceRecord, StepAttempt
from sequence.ops import maintenance
from sequence.runner import run_step
from testproject.testapp.sequences import ThreeSteps

pytestmark = pytest.mark.django_db


def statements(queries: CaptureQueriesContext, verb: str, table: type | None = None) -> list[str]:
    """The statements that begin with ``verb`` (and name the model's table)."""
    found = [
        q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith(verb)
    ]
    if table is not None:
        found = [sql for sql in found if table._meta.db_table in sql]
    return found


def test_start_many_inserts_its_rows_in_one_statement():
    with CaptureQueriesContext(connection) as queries:
        handles = ThreeSteps.start_many([{"n": n} for n in range(200)])
    assert len(statements(queries, "INSERT", SequenceRecord)) == 1
    assert SequenceRecord.objects.filter(pk__in=[h.id for h in handles]).count() == 200


def test_bulk_steering_is_one_update_however_many_rows():
    ThreeSteps.start_many([{"n": n} for n in range(50)])
    with CaptureQueriesContext(connection) as queries:
        paused = ThreeSteps.records().pause()
    assert paused == 50
    assert len(statements(queries, "UPDATE")) == 1
    assert ThreeSteps.records().filter(status=Status.PAUSED).count() == 50


def test_waking_many_sleepers_is_one_update():
    ThreeSteps.start_many([{"n": n} for n in range(30)])
    ThreeSteps.records().update(status=Status.SLEEPING, wake_at=timezone.now() - timedelta(1))
    with CaptureQueriesContext(connection) as queries:
        woken = bulk.wake(ThreeSteps.records())
    assert len(woken) == 30
    assert len(statements(queries, "UPDATE")) == 1
    assert not ThreeSteps.records().exclude(status=Status.PENDING).exists()


def test_a_history_row_is_one_insert():
    seq = ThreeSteps.start({})
    entry = history.Entry(
        sequence_id=seq.id, step_index=0, step="A", epoch=0, attempt=1,
        outcome="succeeded", started_at=timezone.now(),
    )  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        history.write(entry)
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]
    assert StepAttempt.objects.filter(sequence_id=seq.id, outcome="succeeded").count() == 1


class Element(Step):
    def perform(self) -> None:
        pass


class Fan(Sequence):
    steps = [ForEach("items", Element, concurrency=2)]


def test_the_next_element_is_queued_by_one_update():
    seq = Fan.start({"items": list(range(5))})
    run_step(seq.id, 0, 0)  # the ForEach begins: elements 0 and 1 are queued
    queued = set(
        SequenceItem.objects.filter(sequence_id=seq.id, status="queued").values_list(
            "index", flat=True
        )
    )
    assert queued == {0, 1}
    with CaptureQueriesContext(connection) as queries:
        index = elements._queue_next(seq.id, 0, after=1)
    assert index == 2
    assert len(queries.captured_queries) == 1


def test_a_sweep_sets_the_page_cache_once_on_sqlite():
    with CaptureQueriesContext(connection) as queries:
        maintenance._sweep()
    pragmas = [q for q in queries.captured_queries if q["sql"].startswith("PRAGMA")]
    assert len(pragmas) == (1 if connection.vendor == "sqlite" else 0)
