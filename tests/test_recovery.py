"""The recovery sweep: what it knows of each row, and a worker's memory, which does not grow
with the sequences in flight.

The recovery sweep runs in a thread of every worker and reads every sequence in flight.
Whatever it holds at once is memory the worker keeps: freed, it stays with the allocator
(Python's arenas, the thread's malloc arena). Before these tests a sweep held a set of
every queued job id, every row it found live and two batches of whole plans, and one
worker with 10,000 sequences in flight grew by about 10 MB (bench/, scale).
"""

from __future__ import annotations

import gc
import sys
import threading
import tracemalloc
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rq import Queue

from sequence.declare.registry import find_step
from sequence.engine import recovery
from sequence.engine.rq import registries
from sequence.engine.rq.dispatch import ENTRY_POINT, get_queue, job_id
from sequence.models import SequenceRecord
from sequence.ops import maintenance as upkeep
from testproject.testapp.faults import FaultChain

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

BATCH = 200


def _add_in_flight(count: int, plan: list[str]) -> None:
    """``count`` more sequences whose first step's job waits in the queue."""
    rows = SequenceRecord.objects.bulk_create(
        [SequenceRecord(name=FaultChain.name, plan=plan, queue="default") for _ in range(count)],
        batch_size=1000,
    )
    queue = get_queue("default")
    for start in range(0, count, 1000):
        queue.enqueue_many(
            [
                Queue.prepare_data(ENTRY_POINT, args=(r.pk, 0, 0), job_id=job_id(r.pk, 0, 0))
                for r in rows[start : start + 1000]
            ]
        )


def _sweep_peak() -> int:
    """Bytes a sweep holds at most, with every sequence's outbox entry overdue."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    in_flight = SequenceRecord.objects.update(dispatch_due=an_hour_ago, updated_at=an_hour_ago)
    gc.collect()
    tracemalloc.start()
    try:
        result = recovery.sweep(grace=30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Every job is in its queue: the sweep looked at each row, and confirmed each entry.
    assert not result.redispatched
    assert len(result.confirmed) == in_flight
    return peak


def test_a_sweep_holds_no_more_with_more_sequences_in_flight(settings):
    settings.SEQUENCE_SWEEP_BATCH = BATCH
    plan = FaultChain.plan_names()
    _add_in_flight(BATCH, plan)
    _sweep_peak()  # imports and Django's caches: not the sweep's
    few = _sweep_peak()
    _add_in_flight(3000, plan)
    many = _sweep_peak()
    per_sequence = (many - few) / 3000
    # What may grow: the ids SweepResult.confirmed returns (about 40 bytes each) and the
    # queue's listing (about 13 bytes per job); about 65 in all on CPython 3.12. Before,
    # with a set of the queued job ids and one of the rows found live: about 350.
    assert per_sequence < 100, f"{per_sequence:.0f} bytes per sequence in flight"


def test_a_sweep_reads_the_current_step_not_the_plan(settings):
    settings.SEQUENCE_SWEEP_BATCH = BATCH
    short = FaultChain.plan_names()
    _add_in_flight(2 * BATCH, short)
    _sweep_peak()
    with_short_plans = _sweep_peak()
    SequenceRecord.objects.update(plan=short * 50)  # 200 steps each
    with_long_plans = _sweep_peak()
    # Whole plans, two batches of them as before, took about 6.8 MB more.
    assert with_long_plans - with_short_plans < 100_000


def test_the_sweep_knows_the_current_step_of_each_row():
    plan = FaultChain.plan_names()
    first, last, past = SequenceRecord.objects.bulk_create(
        [
            SequenceRecord(name=FaultChain.name, plan=plan, queue="default", step_index=i)
            for i in (0, len(plan) - 1, len(plan))
        ]
    )
    rows = {r.pk: r for batch in recovery._batches(SequenceRecord.objects.all(), 10) for r in batch}
    assert "plan" in rows[first.pk].get_deferred_fields()
    assert recovery._step(rows[first.pk]) == plan[0]
    assert recovery._step(rows[last.pk]) == plan[-1]
    assert recovery._step(rows[past.pk]) == "?"
    assert spec(rows[last.pk]) is FaultChain.step_named(plan[-1])
    assert spec(rows[past.pk]) is None
    # A whole row (as the runner passes one) gives the same answers from its plan.
    whole = SequenceRecord.objects.get(pk=last.pk)
    assert (recovery._step(whole), spec(whole)) == (plan[-1], spec(rows[last.pk]))


def spec(record: SequenceRecord):
    """The current definition of the row's current step, as the sweep looks it up."""
    return find_step(record.name, recovery._step(record))


def test_the_sweep_holds_one_batch_at_a_time():
    SequenceRecord.objects.bulk_create(
        [SequenceRecord(name=FaultChain.name, plan=["a"], queue="default") for _ in range(25)]
    )
    batches = recovery._batches(SequenceRecord.objects.all(), 10)
    first = next(batches)
    assert len(first) == 10
    second = next(batches)
    assert first == []  # emptied: its rows may go
    assert len(second) == 10
    assert len(next(batches)) == 5


def test_a_queue_listing_is_exact_and_small():
    ids = [job_id(n, n % 7, n % 3) for n in range(20_000)]
    listing = registries._IdSet(len(ids))
    for jid in ids:
        listing.add(jid)
    assert all(jid in listing for jid in ids)
    assert not any(job_id(n, 0, 5) in listing for n in range(20_000))
    # 8 bytes a slot, at most 60% full; a set of these strings takes about 100 per id.
    assert sys.getsizeof(listing._slots) < 14 * len(ids)


def test_the_maintenance_thread_opens_a_new_connection_after_a_sweep(monkeypatch):
    """Each sweep leaves SQLite's driver a prepared statement per shape of IN list (it
    keeps 128 per connection): they must not pile up over a worker's life."""
    raw = []
    done = threading.Event()

    def sweep() -> None:
        SequenceRecord.objects.filter(pk__in=list(range(len(raw) + 1))).count()
        raw.append(connection.connection)  # this thread's driver connection
        if len(raw) == 2:
            done.set()

    monkeypatch.setattr(upkeep, "_sweep", sweep)
    maintenance = upkeep.Maintenance("memory-test", heartbeat=0, sweep_interval=0.05, lock=None)
    monkeypatch.setattr(maintenance, "_my_turn", lambda: True)
    maintenance.start()
    try:
        assert done.wait(10)
    finally:
        maintenance.stopped.set()
        maintenance.join(10)
    assert raw[0] is not raw[1]


def test_the_maintenance_thread_sweeps_with_a_small_sqlite_page_cache():
    """The default 2 MB cache, filled by one sweep, would stay with the thread's malloc
    arena (bench/: about 2 MB of a worker's growth with 10,000 sequences in flight)."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's page cache")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA cache_size")
        (before,) = cursor.fetchone()
    try:
        upkeep._sweep()
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA cache_size")
            assert cursor.fetchone() == (-upkeep.SWEEP_PAGE_CACHE,)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA cache_size = {int(before)}")
