"""(f) DBOS: each chain one workflow of ``steps`` steps, on a DBOS queue on PostgreSQL.

``python -m bench.dbos_chain prepare URL`` makes DBOS's system tables in the database
at URL (the template each repetition's database is copied from);
``python -m bench.dbos_chain worker URL INDEX CONCURRENCY GATE`` is one worker process:
it launches DBOS (its own executor id, the one pinned application version), waits at
the gate, then registers the queue (which starts its polling of it) and runs
workflows until killed. The driver enqueues with ``seed``, through ``DBOSClient``.
Each step runs the same body and writes the same timing line as the other contenders.

DBOS polls a queue once a second by default; the bench polls every ``POLL`` seconds,
as a deployment tuned for throughput would.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from bench.app.timing import timed_work

PACKAGE = "dbos"
NAME = "bench-f"
QUEUE = "bench-f"
VERSION = "bench-1"
POLL = 0.01
WORKFLOW = "bench_chain"


def config(url: str, executor_id: str) -> dict[str, Any]:
    return {
        "name": NAME,
        "system_database_url": url,
        "application_version": VERSION,
        "executor_id": executor_id,
        "log_level": "WARNING",
    }


def define() -> None:
    """Register the chain workflow and its step with DBOS (before launch)."""
    from dbos import DBOS

    @DBOS.step(name="bench_step")
    def step(data: dict[str, Any], chain: int, index: int) -> dict[str, Any]:
        timed_work(data, chain, index)
        return data

    @DBOS.workflow(name=WORKFLOW)
    def chain(data: dict[str, Any], chain_id: int, steps: int) -> None:
        for index in range(steps):
            data = step(data, chain_id, index)


def prepare(url: str) -> None:
    """Create DBOS's schema in ``url`` (launching DBOS does), then shut down."""
    from dbos import DBOS

    define()
    DBOS(config=config(url, "bench-prepare"))  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.destroy()


def worker(url: str, index: str, concurrency: str, gate: str) -> None:
    import redis
    from dbos import DBOS

    from bench import sqlcount

    sqlcount.install()
    define()
    DBOS(config=config(url, f"bench-executor-{index}"))  # type: ignore[arg-type]
    DBOS.launch()
    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    conn.rpush(f"{gate}:in", "1")
    conn.blpop([gate], timeout=120)
    DBOS.register_queue(QUEUE, worker_concurrency=int(concurrency), polling_interval_sec=POLL)
    threading.Event().wait()


def seed(url: str, run: str, chains: int, steps: int) -> None:
    """Enqueue ``chains`` workflows of ``steps`` steps (not measured: the workers wait)."""
    from dbos import DBOSClient

    client = DBOSClient(system_database_url=url, application_name=NAME)
    try:
        for chain_id in range(chains):
            client.enqueue(
                {"workflow_name": WORKFLOW, "queue_name": QUEUE, "app_version": VERSION},
                {"run": run, "count": 0},
                chain_id,
                steps,
            )
    finally:
        client.destroy()


if __name__ == "__main__":
    {"prepare": prepare, "worker": worker}[sys.argv[1]](*sys.argv[2:])
