"""(g) django-absurd: each chain one task of ``steps`` checkpointed steps, on PostgreSQL.

``python -m bench.absurd_chain prepare URL`` runs ``migrate`` (django-absurd ships
Absurd's SQL as a migration, and provisions the queue after it) in the database at URL,
the template each repetition's database is copied from;
``python -m bench.absurd_chain worker URL INDEX CONCURRENCY GATE`` is one worker
process: Django set up, it waits at the gate, then runs ``manage.py absurd_worker
--concurrency N --poll-interval 0.01`` in the same process until killed. The driver
queues the tasks with ``seed``, through Absurd's own client (what ``enqueue`` calls).
The task (``bench.absurd_tasks``) runs the same body and writes the same timing line
as the other contenders.
"""

from __future__ import annotations

import os
import sys

PACKAGE = "django_absurd"
QUEUE = "bench_g"
TASK = "bench.absurd_tasks.chain"
POLL = 0.01


def _setup(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.absurd_settings"
    import django

    django.setup()


def prepare(url: str) -> None:
    from django.core.management import call_command

    _setup(url)
    call_command("migrate", verbosity=0)


def worker(url: str, index: str, concurrency: str, gate: str) -> None:
    import redis
    from django.core.management import call_command

    from bench import sqlcount

    sqlcount.install()
    _setup(url)
    import bench.absurd_tasks  # noqa: F401 - loaded before the gate, as a running worker has

    conn = redis.Redis.from_url(os.environ["REDIS_URL"])
    conn.rpush(f"{gate}:in", "1")
    conn.blpop([gate], timeout=120)
    call_command(
        "absurd_worker", queue=QUEUE, concurrency=int(concurrency), poll_interval=POLL,
        worker_id=f"bench-{index}",
    )  # fmt: skip


def seed(url: str, run: str, chains: int, steps: int) -> None:
    """Spawn ``chains`` tasks of ``steps`` steps (not measured: the workers wait)."""
    from absurd_sdk import Absurd

    client = Absurd(url, queue_name=QUEUE)
    try:
        for chain_id in range(chains):
            params = {"args": [{"run": run, "count": 0}, chain_id, steps], "kwargs": {}}
            client.spawn(TASK, params, queue=QUEUE, max_attempts=5)
    finally:
        client.close()


if __name__ == "__main__":
    {"prepare": prepare, "worker": worker}[sys.argv[1]](*sys.argv[2:])
