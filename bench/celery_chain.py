"""(d) Celery's ``chain`` on the same Redis, for reference: ``python -m bench.celery_chain``.

Each step runs the same body and records the same timestamps as the other contenders;
the data rides in the messages (no database, no result backend). Workers use the solo
pool, one process each, like RQ's SimpleWorker.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from celery import Celery, chain

from bench.app.timing import timed_work

app = Celery("bench", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_default_queue="bench-d",
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.step")
def step(data: dict[str, Any], chain_id: int, index: int) -> dict[str, Any]:
    timed_work(data, chain_id, index)
    return data


@app.task(name="bench.gate")
def gate(key: str) -> None:
    import redis

    conn = redis.Redis.from_url(app.conf.broker_url)
    conn.rpush(f"{key}:in", "1")
    conn.blpop([key], timeout=120)


def _chain(run: str, chain_id: int, steps: int) -> Any:
    first = step.s({"run": run, "count": 0}, chain_id, 0)
    return chain(first, *(step.s(chain_id, i) for i in range(1, steps)))


def main() -> None:
    import redis

    from bench import procs
    from bench.measure import Timings, check_complete, quantile

    plan = json.loads(Path(sys.argv[1]).read_text())
    out_file = Path(sys.argv[2])
    out = out_file.parent
    timings = Timings(out / "timings-celery.log")
    os.environ["BENCH_TIMING_FILE"] = str(timings.path)
    conn = redis.Redis.from_url(app.conf.broker_url)
    runs = itertools.count(1)
    result: dict[str, Any] = {
        "throughput": [],
        "latency": [],
        "note": "Celery's `chain` with the solo pool, one process per worker, JSON, "
        "Redis broker, no result backend, default prefetch.",
    }
    kinds = dict(plan["kinds"])
    for workers in kinds["recommended"]:
        log = out / f"celery-{workers}.log"
        pool = [
            procs.spawn(
                [
                    procs.python(),
                    "-m",
                    "celery",
                    "-A",
                    "bench.celery_chain",
                    "worker",
                    "--pool",
                    "solo",
                    "-Q",
                    f"bench-d,gate-{i}",
                    "-n",
                    f"w{i}@bench",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "WARNING",
                ],
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                log=log,
            )
            for i in range(workers)
        ]
        try:
            for rep in range(plan["reps"]):
                run = f"d{next(runs)}"
                key = f"bench:gate:{run}"
                for i in range(workers):
                    gate.apply_async((key,), queue=f"gate-{i}")
                deadline = time.monotonic() + 60
                while conn.llen(f"{key}:in") < workers:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"Celery workers did not reach the gate:\n{log.read_text()}"
                        )
                    time.sleep(0.02)
                for chain_id in range(plan["chains"]):
                    _chain(run, chain_id, plan["steps"]).apply_async()
                conn.rpush(key, *["go"] * workers)
                lines = timings.wait(run, plan["chains"] * plan["steps"], timeout=240)
                check_complete(lines, plan["chains"], plan["steps"])
                first = min(line[2] for line in lines)
                last = max(line[3] for line in lines)
                rate = len(lines) / (last - first)
                result["throughput"].append({"workers": workers, "rep": rep, "rate": rate})
                print(f"  [celery] x{workers} rep {rep + 1}: {rate:.0f} steps/s", flush=True)
            if workers == 1:
                for rep in range(plan["reps"]):
                    run = f"d{next(runs)}"
                    _chain(run, 0, plan["latency_steps"]).apply_async()
                    found = timings.wait(run, plan["latency_steps"], timeout=120)
                    lines = sorted(found, key=lambda x: x[1])
                    handoffs = [lines[i + 1][2] - lines[i][3] for i in range(len(lines) - 1)]
                    result["latency"].append({
                        "rep": rep, "median_ms": statistics.median(handoffs) * 1000,
                        "p95_ms": quantile(handoffs, 0.95) * 1000,
                    })  # fmt: skip
        finally:
            for proc in pool:
                procs.kill(proc)
    out_file.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
