"""The cost of waiting and of starting in bulk, measured by ``bench.driver``.

- lateness: sequences sleeping 5 s on one idle recommended worker, the delay between
  each wake-up time (read from the rows while they sleep) and the start of the step
  after the sleep (its history row);
- holding: one wake pass and one recovery sweep with many sequences asleep against the
  same with none, and the Redis keys the sleepers hold;
- start_many against as many start() calls: time, statements and Redis round trips.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import connection
from django.utils import timezone

from bench.app.sequences import Nap, Started
from bench.measure import quantile
from sequence.engine.recovery import sweep
from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import Status
from sequence.engine.waiting import wake_due
from sequence.models import SequenceRecord, StepAttempt

QUEUE = "bench-c"


def lateness(n: int, pool: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Start ``n`` Nap sequences on the pool's idle worker; the wake-up lateness of each."""
    conn = get_queue(QUEUE).connection
    keys_idle = conn.dbsize()
    seqs = Nap.start_many([{} for _ in range(n)], queue=QUEUE)
    ids = [s.id for s in seqs]
    wake_at: dict[int, Any] = {}
    queue = get_queue(QUEUE)
    most_asleep, keys_asleep, queued_then = 0, keys_idle, 0
    deadline = time.monotonic() + 120
    while True:
        asleep = dict(
            SequenceRecord.objects.filter(pk__in=ids, status=Status.SLEEPING).values_list(
                "pk", "wake_at"
            )
        )
        for pk, at in asleep.items():
            wake_at.setdefault(pk, at)
        if len(asleep) > most_asleep:
            # Jobs still queued then (sleeps not yet begun) hold a key each, briefly.
            most_asleep, keys_asleep, queued_then = len(asleep), conn.dbsize(), queue.count
        if SequenceRecord.objects.filter(pk__in=ids, status=Status.COMPLETED).count() == n:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"lateness: not all {n} sequences completed:\n{pool.log_tail()}")
        time.sleep(0.1)
    woke = dict(
        StepAttempt.objects.filter(sequence_id__in=ids, step_index=1).values_list(
            "sequence_id", "started_at"
        )
    )
    missing = set(ids) - set(wake_at)
    if missing:
        raise RuntimeError(f"lateness: {len(missing)} sleepers were never seen asleep")
    late = [(woke[pk] - wake_at[pk]).total_seconds() for pk in ids]
    result = {
        "sequences": n, "sleep_seconds": 5,
        "median_ms": statistics.median(late) * 1000, "p95_ms": quantile(late, 0.95) * 1000,
        "max_ms": max(late) * 1000, "min_ms": min(late) * 1000,
        "most_asleep": most_asleep, "redis_keys_idle": keys_idle,
        "redis_keys_asleep": keys_asleep, "queued_jobs_then": queued_then,
    }  # fmt: skip
    say(
        f"lateness: median {result['median_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms; "
        f"Redis keys {keys_idle} idle, {keys_asleep} with {most_asleep} asleep"
    )
    return result


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def holding(n: int, reps: int, say: Callable[[str], None]) -> dict[str, Any]:
    """One wake pass and one sweep with ``n`` sleepers (made in bulk) against none."""
    conn = get_queue(QUEUE).connection
    figures: dict[str, Any] = {"sleepers": n, "reps": reps}
    for label in ("none", "asleep"):
        if label == "asleep":
            wake = timezone.now() + timedelta(days=1)
            started = time.monotonic()
            SequenceRecord.objects.bulk_create(
                (
                    SequenceRecord(
                        name=Nap.name, data={}, plan=Nap.plan_names(), version=str(Nap.version),
                        queue=QUEUE, status=Status.SLEEPING, step_index=1, epoch=1, wake_at=wake,
                    )
                    for _ in range(n)
                ),
                batch_size=1000,
            )  # fmt: skip
            figures["fill_seconds"] = time.monotonic() - started
        keys = conn.dbsize()
        wake_due(), sweep()  # warm: the first call of each opens what later calls reuse
        figures[label] = {
            "wake_ms": _timed(wake_due, reps),
            "sweep_ms": _timed(sweep, reps),
            "redis_keys_before": keys,
            "redis_keys_after": conn.dbsize(),
            "rows": SequenceRecord.objects.count(),
        }
    asleep, none = figures["asleep"], figures["none"]
    say(
        f"holding {n:,}: wake pass {statistics.median(asleep['wake_ms']):.2f} ms vs "
        f"{statistics.median(none['wake_ms']):.2f} ms, sweep "
        f"{statistics.median(asleep['sweep_ms']):.2f} ms vs "
        f"{statistics.median(none['sweep_ms']):.2f} ms"
    )
    return figures


class RoundTrips:
    """Counts round trips to Redis on one connection: commands sent alone, and pipelines."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def on(self, conn: Any) -> Iterator[RoundTrips]:
        plain, pipeline = conn.execute_command, conn.pipeline

        def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return plain(*args, **kwargs)

        def make_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            def counted(*a: Any, **k: Any) -> Any:
                self.count += 1
                return execute(*a, **k)

            pipe.execute = counted
            return pipe

        conn.execute_command, conn.pipeline = execute_command, make_pipeline
        try:
            yield self
        finally:
            del conn.execute_command, conn.pipeline


def starting(n: int, reset: Callable[[], None], say: Callable[[str], None]) -> dict[str, Any]:
    """``n`` sequences started with one start_many against ``n`` start() calls."""
    queue = get_queue(QUEUE)
    datas = [{"i": i, "email": f"user{i}@example.com"} for i in range(n)]
    figures: dict[str, Any] = {"sequences": n}
    queue.connection.ping()  # connected before either is timed
    for label in ("start", "start_many"):
        reset()
        trips = RoundTrips()
        queries: list[str] = []

        def count(execute: Any, sql: str, *args: Any, queries: list[str] = queries) -> Any:
            # Counted, not captured: capturing formats every statement's SQL with its
            # parameters, which would cost a 1,000-row INSERT far more than a start().
            queries.append("")
            return execute(sql, *args)

        with trips.on(queue.connection), connection.execute_wrapper(count):
            began = time.perf_counter()
            if label == "start":
                for data in datas:
                    Started.start(data, queue=QUEUE)
            else:
                Started.start_many(datas, queue=QUEUE)
            seconds = time.perf_counter() - began
        queued = queue.count
        if queued != n:
            raise RuntimeError(f"{label}: {queued} jobs queued for {n} sequences")
        figures[label] = {
            "seconds": seconds, "round_trips": trips.count,
            "queries": len(queries), "queued": queued,
        }  # fmt: skip
        say(f"{label} x{n:,}: {seconds:.2f} s, {trips.count} Redis round trips")
    reset()
    return figures


def run(
    plan: dict[str, Any],
    out: Path,
    result: dict[str, Any],
    pool_factory: Callable[[], Any],
    reset: Callable[[], None],
    say: Callable[[str], None],
    phases: Any,
) -> None:
    """The phases the plan asks for: ``lateness``, ``holding``, ``start_many``."""
    if plan.get("lateness"):
        reset()
        pool = pool_factory()
        try:
            with phases(f"lateness: {plan['lateness']:,} sleepers of 5 s"):
                pool.release(pool.hold())  # the worker is up and idle
                result["lateness"] = lateness(plan["lateness"], pool, say)
        finally:
            pool.stop()
    if plan.get("holding"):
        reset()
        with phases(f"holding: {plan['holding']:,} asleep"):
            result["holding"] = holding(plan["holding"], plan.get("holding_reps", 20), say)
    if plan.get("start_many"):
        with phases(f"start_many: {plan['start_many']:,} sequences"):
            result["start_many"] = starting(plan["start_many"], reset, say)
    reset()
