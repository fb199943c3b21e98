"""Worker stop time: ``python -m bench.stopping PLAN.json OUT.json``.

How long ``manage.py sequence worker`` takes to exit once it should, for each worker
class (``--worker-class simple`` and ``fork``):

- idle: from SIGTERM, sent once the worker is idle (its state in RQ's registry), to its
  exit;
- burst: a ``--burst`` worker, from its queue emptying (the ``finished_at`` of the last
  sequence on it) to its exit.

API.md's bound is 2 s for both. Started by ``python -m bench`` after the driver, once
per database, on a Redis database of its own (nothing the driver queued is there, and
it may flush it). The workers are started from the command line, as an operator starts
them; this module imports no part of ``sequence`` but its public ``Sequence`` API, so it
follows the package wherever its modules move.

Each configuration starts its workers side by side and then stops them ``stop_gap``
seconds apart (see ``WORKER_STOP`` in ``bench.__main__``): one at a time, ten stops of
about a second each would cost ten seconds per configuration.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench import procs  # noqa: E402
from bench.app import jobs  # noqa: E402
from bench.app.sequences import Park  # noqa: E402
from bench.measure import Phases  # noqa: E402

KINDS = ("simple", "fork")
# RQ's own worker could hang 61 s on its way out: wait past that, so a hang is
# measured (and reported) rather than cut off.
LIMIT = 70.0


def say(message: str) -> None:
    print(f"  [{connection.vendor}] {message}", flush=True)


@dataclass
class Worker:
    """One ``sequence worker`` process, on a queue of its own, and when it exited."""

    name: str
    queue: str
    proc: subprocess.Popen[bytes]
    log: Path
    exited: tuple[float, float] | None = None  # (monotonic, wall clock)
    done: threading.Event = field(default_factory=threading.Event)

    def watch(self) -> None:
        """Time the exit from a thread blocked in waitpid, so a worker that exits while
        the next one is being signalled is timed to the moment, not when it is looked at."""

        def wait() -> None:
            try:
                self.proc.wait(timeout=LIMIT * 2)
                self.exited = (time.monotonic(), time.time())
            except subprocess.TimeoutExpired:
                pass
            self.done.set()

        threading.Thread(target=wait, daemon=True).start()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def start(kind: str, mode: str, n: int, out: Path) -> list[Worker]:
    """``n`` workers side by side, each on its own queue (and so holding that queue's
    scheduler lock, as a lone worker does); start-up is not what is measured."""
    if n > len(settings.STOP_QUEUES):
        raise ValueError(f"worker_stop {n} > the {len(settings.STOP_QUEUES)} STOP_QUEUES")
    workers = []
    for i, queue in enumerate(settings.STOP_QUEUES[:n]):
        name = f"bench-stop-{connection.vendor}-{kind}-{mode}-{i}"
        log = out / f"stop-{connection.vendor}-{kind}-{mode}.log"
        cmd = [procs.python(), "manage.py", "sequence", "worker", "--worker-class", kind]
        cmd += ["--name", name, *(["--burst"] if mode == "burst" else []), queue]
        proc = procs.spawn(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"), log=log)
        workers.append(Worker(name, queue, proc, log))
    for worker in workers:
        worker.watch()
    return workers


def wait_until(ready: Callable[[Worker], bool], workers: list[Worker], what: str) -> None:
    """Until ``ready`` holds for every worker; fail, with its log, if one exits first."""
    deadline = time.monotonic() + 120
    waiting = list(workers)
    while waiting:
        waiting = [w for w in waiting if not ready(w)]
        for w in waiting:
            if w.proc.poll() is not None:
                raise RuntimeError(f"{w.name} exited before {what}:\n{w.log_tail()}")
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(
                f"{waiting[0].name}: not {what} after 120 s:\n{waiting[0].log_tail()}"
            )
        time.sleep(0.02)


def exits(workers: list[Worker]) -> list[tuple[float, float] | None]:
    """Each worker's exit times, None for one still running ``LIMIT`` s on (then killed)."""
    deadline = time.monotonic() + LIMIT
    for w in workers:
        w.done.wait(timeout=max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.exited is not None and w.proc.returncode != 0:
            raise RuntimeError(f"{w.name} exited with {w.proc.returncode}:\n{w.log_tail()}")
    return [w.exited for w in workers]


def idle(kind: str, n: int, gap: float, out: Path) -> list[float | None]:
    """Seconds from SIGTERM to exit of ``n`` idle workers, signalled ``gap`` s apart."""
    conn = jobs.queue(settings.STOP_QUEUES[0]).connection
    workers = start(kind, "idle", n, out)
    try:
        # RQ sets "idle" as its loop starts waiting on the queue: the scheduler is up.
        wait_until(lambda w: conn.hget(f"rq:worker:{w.name}", "state") == b"idle", workers, "idle")
        signalled = []
        for w in workers:
            signalled.append(time.monotonic())
            w.proc.terminate()
            time.sleep(gap)
        return [
            None if ended is None else ended[0] - sent
            for sent, ended in zip(signalled, exits(workers), strict=True)
        ]
    finally:
        for w in workers:
            procs.kill(w.proc)


def gate_key(queue: str) -> str:
    return f"bench:stop:{queue}"


def burst(kind: str, n: int, gap: float, out: Path) -> list[float | None]:
    """Seconds from the queue emptying to exit of ``n`` ``--burst`` workers.

    Each worker's queue holds one ``Park`` sequence, which holds it until released;
    once every worker is held (all started), they are released ``gap`` s apart. The
    sequence's ``finished_at`` is when its queue emptied: nothing else is queued there.
    """
    conn = jobs.queue(settings.STOP_QUEUES[0]).connection
    queues = settings.STOP_QUEUES[:n]
    seqs = [Park.start({"key": gate_key(q)}, queue=q) for q in queues]
    workers = start(kind, "burst", n, out)
    try:
        wait_until(lambda w: conn.llen(f"{gate_key(w.queue)}:in") > 0, workers, "parked")
        for q in queues:
            conn.rpush(gate_key(q), "go")
            time.sleep(gap)
        ended = exits(workers)
    finally:
        for w in workers:
            procs.kill(w.proc)
    finished = dict(
        Park.records().filter(pk__in=[s.id for s in seqs]).values_list("pk", "finished_at")
    )
    if None in finished.values():
        raise RuntimeError(
            f"burst {kind}: a Park sequence did not finish:\n{workers[0].log_tail()}"
        )
    return [
        None if end is None else end[1] - finished[s.id].timestamp()
        for s, end in zip(seqs, ended, strict=True)
    ]


def figures(mode: str, kind: str, seconds: list[float | None]) -> dict[str, Any]:
    timed = [s for s in seconds if s is not None]
    row = {
        "mode": mode, "kind": kind, "seconds": seconds, "hung": len(seconds) - len(timed),
        "median": statistics.median(timed) if timed else None,
        "max": None if len(timed) < len(seconds) else max(timed),
    }  # fmt: skip
    took = "; ".join(f"{s:.2f}" if s is not None else f"> {LIMIT:.0f}" for s in seconds)
    say(f"worker stop, {mode} {kind}: {took} s")
    return row


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out_file = Path(sys.argv[2])
    n, gap = plan["worker_stop"], plan.get("stop_gap", 0.3)
    jobs.queue(settings.STOP_QUEUES[0]).connection.flushdb()
    phases = Phases(f"  [{connection.vendor}] ")
    result: dict[str, Any] = {"stops": n, "gap": gap, "limit": LIMIT, "runs": []}
    for mode, measure in (("idle", idle), ("burst", burst)):
        for kind in KINDS:
            with phases(f"worker stop: {n} {mode} {kind} workers"):
                seconds = measure(kind, n, gap, out_file.parent)
            result["runs"].append(figures(mode, kind, seconds))
    result["phases"] = phases.done
    out_file.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
