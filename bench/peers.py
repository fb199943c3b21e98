"""The peers, (f) DBOS and (g) django-absurd, run by the PostgreSQL driver beside the others.

Each repetition of a peer has a database of its own, copied from a template its
contender module prepared (``prepare``: DBOS's system tables; django-absurd's
migration and queue) and dropped after it. Its worker processes start parked at a gate
(Redis, as the RQ workers'), the chains are queued, the workers released together, and
the steps timed from the same timing file as the other contenders'.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import absurd_chain, dbos_chain, procs, sqlcount
from bench.measure import Timings, check_complete

MODULES: dict[str, ModuleType] = {"f": dbos_chain, "g": absurd_chain}
# How long after the last step's timing line the statement counts are read: the step's
# own commit comes after its body. The workers' polls meanwhile count too (at 0.01 s).
SETTLE = 0.05


def available(plan: dict[str, Any]) -> list[str]:
    """The plan's peers whose package is installed (``bench/requirements.txt``)."""
    return [peer for peer in plan.get("peers", []) if find_spec(MODULES[peer].PACKAGE)]


def impls(plan: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(row name, peer, workflows at a time per process): ``f1``, ``f8``, ``g1``, ``g8``."""
    return [(f"{peer}{c}", peer, c) for peer in available(plan) for c in plan["peer_concurrency"]]


def url(name: str) -> str:
    """The URL of database ``name`` on the server the driver's database is on."""
    return urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))


def server() -> Any:
    import psycopg

    return psycopg.connect(url("postgres"), autocommit=True)


def template(peer: str) -> str:
    return f"bench_peer_{peer}_template"


def prepare(plan: dict[str, Any], run: Callable[[list[str]], None]) -> None:
    """Make each peer's template database (dropped by ``drop_templates``)."""
    with server() as conn:
        for peer in available(plan):
            conn.execute(f"DROP DATABASE IF EXISTS {template(peer)} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {template(peer)}")
            run([procs.python(), "-m", MODULES[peer].__name__, "prepare", url(template(peer))])


def drop_templates(plan: dict[str, Any]) -> None:
    with server() as conn:
        for peer in available(plan):
            conn.execute(f"DROP DATABASE IF EXISTS {template(peer)} WITH (FORCE)")


class PeerPool:
    """``n`` worker processes of one peer on a fresh database, parked at a gate."""

    def __init__(self, peer: str, concurrency: int, n: int, out: Path, key: str) -> None:
        self.db = f"bench_peer_{peer}"
        with server() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {self.db} TEMPLATE {template(peer)}")
        self.url = url(self.db)
        self.log = out / f"worker-postgresql-{peer}{concurrency}-{n}.log"
        module = MODULES[peer].__name__
        self.procs = [
            procs.spawn(
                [procs.python(), "-m", module, "worker", self.url, str(i), str(concurrency), key],
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                log=self.log,
            )
            for i in range(n)
        ]
        self.pids = [p.pid for p in self.procs]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            procs.kill(proc)
        with server() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


def throughput(
    name: str, peer: str, concurrency: int, n: int, chains: int, steps: int,
    timings: Timings, gate: Any, run: str,
) -> dict[str, Any]:  # fmt: skip
    """One repetition of a peer: like ``driver.throughput``, on a database of its own."""
    began = time.monotonic()
    out = timings.path.parent
    key = f"bench:gate:{run}"
    pool = PeerPool(peer, concurrency, n, out, key)
    try:
        procs.wait_at_gate(gate, key, pool, n=n, timeout=120, name=name)
        seeding = time.monotonic()
        MODULES[peer].seed(pool.url, run, chains, steps)
        seeded = time.monotonic() - seeding
        counts = sqlcount.read(out, pool.pids)
        cpu_before = sum(procs.cpu_seconds(pid) for pid in pool.pids)
        gate.rpush(key, *["go"] * n)
        lines = timings.wait(run, chains * steps, timeout=240, pools=[pool])
        time.sleep(SETTLE)
        statements, commits = sqlcount.since(out, pool.pids, counts)
        cpu = sum(procs.cpu_seconds(pid) for pid in pool.pids) - cpu_before
    finally:
        pool.stop()
    check_complete(lines, chains, steps)
    first = min(line[2] for line in lines)
    last = max(line[3] for line in lines)
    return {
        "impl": name, "concurrency": concurrency,
        "steps": len(lines), "seconds": last - first, "rate": len(lines) / (last - first),
        "cpu_ms": cpu / len(lines) * 1000, "statements": statements / len(lines),
        "commits": commits / len(lines), "seed_seconds": seeded,
        "wall_seconds": time.monotonic() - began,
    }  # fmt: skip
