"""The database cost of the hot path, pinned: a step and a start each take a fixed few queries.

Counted with Django's CaptureQueriesContext, which also counts BEGIN and COMMIT. Steps
run in this process on a real RQ SimpleWorker (burst mode) against real Redis.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from sequence.engine.rq.dispatch import get_queue
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops.worker import build_worker
from sequence.runner import run_step
from testproject.testapp.sequences import Arithmetic

pytestmark = pytest.mark.django_db(transaction=True)

MAX_QUERIES_PER_STEP = 5
MAX_QUERIES_TO_START = 3


def queued() -> int:
    return get_queue("default").count


def test_each_step_takes_the_same_few_queries():
    seq = Arithmetic.start({"n": 4})
    get_queue("default").empty()  # run the steps by hand, one at a time
    counts = []
    for index in range(3):
        epoch = SequenceRecord.objects.get(pk=seq.id).epoch
        with CaptureQueriesContext(connection) as queries:
            run_step(seq.id, index, epoch)
        counts.append(len(queries.captured_queries))
    seq.refresh()
    assert seq.status == "completed"
    assert seq.data == {"n": 4, "doubled": 8, "plus_one": 9, "seen": [8, 9]}
    assert counts == [counts[0]] * 3, counts
    assert counts[0] <= MAX_QUERIES_PER_STEP, queries.captured_queries
    if connection.vendor == "postgresql":
        # The claim, and the commit with its history row as one statement (no BEGIN).
        assert counts[0] == 2, queries.captured_queries


def test_a_real_worker_spends_the_same_queries_per_step():
    sequences = [Arithmetic.start({"n": n}) for n in range(4)]
    worker = build_worker(["default"])
    with CaptureQueriesContext(connection) as queries:
        worker.work(burst=True)
    steps = 3 * len(sequences)
    assert StepAttempt.objects.filter(outcome="succeeded").count() == steps
    assert SequenceRecord.objects.filter(status="completed").count() == len(sequences)
    assert len(queries.captured_queries) <= MAX_QUERIES_PER_STEP * steps, [
        q["sql"][:80] for q in queries.captured_queries
    ]


def test_start_takes_at_most_three_queries_and_one_enqueue():
    with CaptureQueriesContext(connection) as queries:
        seq = Arithmetic.start({"n": 1})
    assert len(queries.captured_queries) <= MAX_QUERIES_TO_START, queries.captured_queries
    assert queued() == 1
    assert get_queue("default").get_job_ids() == [f"seq-{seq.id}-0-0"]


def test_start_in_a_transaction_enqueues_once_after_commit():
    with CaptureQueriesContext(connection) as queries:
        with transaction.atomic():
            Arithmetic.start({"n": 1})
            inside = len(queries.captured_queries)
            assert queued() == 0
        after_commit = len(queries.captured_queries)
    assert queued() == 1
    # The caller's BEGIN and COMMIT aside, the start itself stays within the budget.
    own = after_commit - 2
    assert own <= MAX_QUERIES_TO_START, (inside, queries.captured_queries)


def test_finished_step_jobs_leave_no_keys_in_redis(redis_db):
    Arithmetic.start({"n": 2})
    build_worker(["default"]).work(burst=True)
    leftovers = [
        key.decode()
        for pattern in (
            "rq:job:seq-*",
            "rq:executions:seq-*",
            "rq:execution:seq-*",
            "rq:results:seq-*",
        )
        for key in redis_db.scan_iter(pattern)
    ]
    assert leftovers == []


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's commit setting")
def test_the_relaxed_claim_leaves_the_session_synchronous():
    seq = Arithmetic.start({"n": 4})
    get_queue("default").empty()
    run_step(seq.id, 0, SequenceRecord.objects.get(pk=seq.id).epoch)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
