"""The cost of a ForEach, measured by ``bench.driver`` on 2 recommended workers.

- throughput: one ForEach of n no-op elements (concurrency 20), elements per second
  from the first element's start to the last one's end, against plain (c) steps per
  second on the same workers in the same run (n steps: n/5 chains of 5 steps);
- scaling: the workers' CPU time per element, and the wall time per element from the
  workers' release to the sequence's completion, for n elements against 100.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from itertools import count
from typing import Any

from bench.app.sequences import Fan
from bench.measure import Timings
from sequence.engine.states import Status
from sequence.models import SequenceRecord

SMALL = 100
_runs = count(1)


def _completed(pk: int, pool: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = SequenceRecord.objects.filter(pk=pk).values_list("status", flat=True).get()
        if status == Status.COMPLETED:
            return
        if status in (Status.FAILED, Status.CANCELED) or time.monotonic() > deadline:
            raise RuntimeError(f"ForEach sequence #{pk} is {status}:\n{pool.log_tail()}")
        time.sleep(0.01)


def one(pool: Any, timings: Timings, n: int) -> dict[str, Any]:
    """One ForEach of ``n`` elements, queued while the workers are parked at a gate."""
    run = f"f{next(_runs)}"
    key = pool.hold()
    seq = Fan.start({"run": run, "items": list(range(n))}, queue=pool.queue)
    cpu_before = pool.cpu()
    released = time.monotonic()
    pool.release(key)
    lines = timings.wait(run, n, timeout=600, pools=[pool])
    _completed(seq.id, pool, 120)
    wall = time.monotonic() - released
    cpu = pool.cpu() - cpu_before
    if len({line[1] for line in lines}) != n or len(lines) != n:
        raise RuntimeError(f"expected {n} distinct elements, saw {len(lines)} timings")
    first = min(line[2] for line in lines)
    last = max(line[3] for line in lines)
    return {
        "elements": n, "seconds": last - first, "rate": n / (last - first),
        "wall_ms": wall / n * 1000, "cpu_ms": cpu / n * 1000,
    }  # fmt: skip


def run(
    plan: dict[str, Any],
    result: dict[str, Any],
    timings: Timings,
    pool_factory: Callable[[], Any],
    steps: Callable[[Any, int], dict[str, Any]],
    reset: Callable[[], None],
    say: Callable[[str], None],
    phases: Any,
) -> None:
    """``plan["foreach"]`` elements against as many (c) steps, and against ``SMALL``."""
    n, reps = plan["foreach"], plan.get("foreach_reps", 1)
    reset()
    pool = pool_factory()
    figures: dict[str, Any] = {"elements": n, "workers": pool.n, "concurrency": 20}
    figures.update(steps=[], big=[], small=[])
    try:
        with phases(f"foreach: {reps} reps of {n:,} elements, {n:,} (c) steps, 100 elements"):
            for rep in range(reps):
                # Interleaved, so a slow moment of the machine hits both.
                row = steps(pool, n)
                figures["steps"].append(row)
                big = one(pool, timings, n)
                figures["big"].append(big)
                small = [one(pool, timings, SMALL) for _ in range(5)]
                figures["small"].append({
                    "rate": statistics.median(s["rate"] for s in small),
                    "wall_ms": statistics.median(s["wall_ms"] for s in small),
                    "cpu_ms": statistics.median(s["cpu_ms"] for s in small),
                })  # fmt: skip
                say(
                    f"foreach rep {rep + 1}/{reps}: {big['rate']:.0f} elements/s vs "
                    f"{row['rate']:.0f} (c) steps/s; per element at {n:,}: "
                    f"{big['cpu_ms']:.2f} ms CPU, {big['wall_ms']:.2f} ms wall; at {SMALL}: "
                    f"{figures['small'][-1]['cpu_ms']:.2f} ms CPU, "
                    f"{figures['small'][-1]['wall_ms']:.2f} ms wall"
                )
    finally:
        pool.stop()
    result["foreach"] = figures
    reset()
