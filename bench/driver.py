"""Runs the measurements on one database: ``python -m bench.driver PLAN.json OUT.json``.

Started by ``python -m bench`` once per database, with DATABASE_URL or SEQUENCE_DB_NAME
and REDIS_URL set. It starts its own worker processes and writes raw figures as JSON;
``bench.report`` turns them into the table.
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

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench import fanout, peers, procs, sqlcount, waiting  # noqa: E402
from bench.app import jobs  # noqa: E402
from bench.app.models import HandChain  # noqa: E402
from bench.app.sequences import Fifty, Five, Gate, Long  # noqa: E402
from bench.measure import Phases, Timings, check_complete, quantile  # noqa: E402
from sequence import Sequence  # noqa: E402
from sequence.models import SequenceItem, SequenceRecord, StepAttempt  # noqa: E402

IMPLS = ("a", "b", "c")
# (e) is (c) with SEQUENCE_INLINE_STEPS: only sequence's own worker runs steps inline.
INLINE_STEPS = 4
SEQUENCE_IMPLS = ("c", "e")


def impls_for(kind: str, plan: dict[str, Any]) -> tuple[str, ...]:
    if not plan.get("own", True):  # a plan of the peers alone
        return ()
    return (*IMPLS, "e") if kind == "recommended" else IMPLS


_runs = itertools.count(1)


def say(message: str) -> None:
    print(f"  [{connection.vendor}] {message}", flush=True)


class Pool:
    """``n`` worker processes of one kind on one queue."""

    def __init__(
        self, kind: str, impl: str, n: int, out: Path, env: dict[str, str] | None = None
    ) -> None:
        self.kind, self.impl, self.n = kind, impl, n
        self.queue = f"bench-{impl}"
        self.log = out / f"worker-{connection.vendor}-{kind}-{impl}-{n}.log"
        jobs_kind = "sequence" if impl in SEQUENCE_IMPLS else "plain"
        inline = {"SEQUENCE_INLINE_STEPS": str(INLINE_STEPS)} if impl == "e" else {}
        self.procs = [
            procs.spawn(
                [procs.python(), "-m", "bench.worker", kind, jobs_kind, self.queue],
                env=dict(os.environ, PYTHONUNBUFFERED="1", **inline, **(env or {})),
                log=self.log,
            )
            for _ in range(n)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def hold(self) -> str:
        """Park every worker in a gate job; return the key that releases them."""
        key = f"bench:gate:{next(_runs)}"
        for _ in range(self.n):
            if self.impl in SEQUENCE_IMPLS:
                Gate.start({"key": key}, queue=self.queue)
            else:
                jobs.queue(self.queue).enqueue(jobs.gate, key)
        conn = jobs.queue(self.queue).connection
        procs.wait_at_gate(conn, key, self, n=self.n, timeout=60)
        return key

    def cpu(self) -> float:
        """CPU seconds the workers (and their horses) used so far."""
        return sum(procs.cpu_seconds(pid) for pid in self.pids)

    def release(self, key: str) -> None:
        jobs.queue(self.queue).connection.rpush(key, *["go"] * self.n)

    def stop(self) -> None:
        for proc in self.procs:
            procs.kill(proc)


def seed(impl: str, run: str, chains: int, steps: int, queue: str) -> None:
    """Queue the first step of ``chains`` chains of ``steps`` steps each.

    Done while the workers are parked at the gate, so it is not measured; the jobs are
    queued in one Redis pipeline for every contender, and (c)'s rows in bulk.
    """
    data = {"run": run, "count": 0}
    if impl in SEQUENCE_IMPLS:
        bulk_seed({5: Five, 50: Fifty, 40: Long}[steps], data, chains, queue)
        return
    q = jobs.queue(queue)
    with q.connection.pipeline() as pipe:
        if impl == "a":
            for chain in range(chains):
                q.enqueue(jobs.bare_step, queue, chain, 0, steps, data, pipeline=pipe)
        else:
            rows = HandChain.objects.bulk_create(
                [HandChain(data=data, steps=steps) for _ in range(chains)]
            )
            for row in rows:
                q.enqueue(jobs.hand_step, queue, row.pk, 0, pipeline=pipe)
        pipe.execute()


def bulk_seed(cls: type[Sequence], data: dict[str, Any], chains: int, queue: str) -> None:
    """Start ``chains`` sequences of ``cls`` fast: rows in bulk, first steps in one pipeline.

    The rows are what ``start()`` saves (the outbox entry already confirmed, as
    ``start()`` leaves it once the first step is queued); each job is queued by
    ``enqueue_step`` itself, with its Redis writes gathered in a pipeline.
    """
    from functools import partial

    from sequence.engine.rq.dispatch import enqueue_step, get_queue

    rows = SequenceRecord.objects.bulk_create(
        SequenceRecord(
            name=cls.name,
            data=dict(data),
            plan=cls.plan_names(),
            version=str(cls.version),
            queue=queue,
        )
        for _ in range(chains)
    )
    q = get_queue(queue)
    spec = cls.step_specs[0]
    with q.connection.pipeline() as pipe:
        q.enqueue_many = partial(type(q).enqueue_many, q, pipeline=pipe)  # type: ignore[method-assign]
        try:
            for row in rows:
                enqueue_step(row.pk, 0, 0, queue, spec)
        finally:
            del q.enqueue_many
        pipe.execute()


def throughput(
    pool: Pool, timings: Timings, chains: int, steps: int, key: str | None = None
) -> dict[str, Any]:
    """One run: park the workers, queue the chains, release them, time the steps.

    ``key`` is a gate the workers are already parked at (see ``matrix``).
    """
    began = time.monotonic()
    run = f"r{next(_runs)}"
    key = key or pool.hold()
    seeding = time.monotonic()
    seed(pool.impl, run, chains, steps, pool.queue)
    seeded = time.monotonic() - seeding
    counts = sqlcount.read(timings.path.parent, pool.pids)
    cpu_before = pool.cpu()
    pool.release(key)
    lines = timings.wait(run, chains * steps, timeout=240, pools=[pool])
    time.sleep(peers.SETTLE)
    statements, commits = sqlcount.since(timings.path.parent, pool.pids, counts)
    cpu = pool.cpu() - cpu_before
    check_complete(lines, chains, steps)
    first = min(line[2] for line in lines)
    last = max(line[3] for line in lines)
    row = {
        "steps": len(lines), "seconds": last - first, "rate": len(lines) / (last - first),
        "cpu_ms": cpu / len(lines) * 1000,
        "seed_seconds": seeded, "wall_seconds": time.monotonic() - began,
    }  # fmt: skip
    if os.environ.get("BENCH_SQLCOUNT_DIR"):
        row.update(statements=statements / len(lines), commits=commits / len(lines))
    return row


def latency(pool: Pool, timings: Timings, steps: int) -> dict[str, Any]:
    run = f"r{next(_runs)}"
    seed(pool.impl, run, 1, steps, pool.queue)
    lines = sorted(timings.wait(run, steps, timeout=120, pools=[pool]), key=lambda x: x[1])
    check_complete(lines, 1, steps)
    handoffs = [lines[i + 1][2] - lines[i][3] for i in range(len(lines) - 1)]
    return {
        "median_ms": statistics.median(handoffs) * 1000,
        "p95_ms": quantile(handoffs, 0.95) * 1000,
    }


def matrix(
    plan: dict[str, Any], out: Path, timings: Timings, result: dict[str, Any], phases: Phases
) -> None:
    # The peers run on PostgreSQL beside the recommended workers, in the same repetitions.
    peer_rows = peers.impls(plan) if connection.vendor == "postgresql" else []
    missing = set(plan.get("peers", [])) - set(peers.available(plan))
    if connection.vendor == "postgresql" and missing:
        say(f"peers {', '.join(sorted(missing))} not installed: skipped (bench/requirements.txt)")
    if peer_rows:
        with phases("peers: template databases"):
            peers.prepare(plan, lambda cmd: procs.run_checked(cmd, out / "peers-prepare.log"))
    try:
        for kind, counts in plan["kinds"]:
            for n in counts:
                matrix_cell(
                    plan, out, timings, result, phases, kind, n,
                    peer_rows if kind == "recommended" else [],
                )  # fmt: skip
    finally:
        if peer_rows:
            peers.drop_templates(plan)


def matrix_cell(
    plan: dict[str, Any], out: Path, timings: Timings, result: dict[str, Any], phases: Phases,
    kind: str, n: int, peer_rows: list[tuple[str, str, int]],
) -> None:  # fmt: skip
    """Every contender on ``n`` workers of ``kind``, the repetitions interleaved."""
    reps = plan["reps"]
    chains = plan["kind_chains"][kind]
    impls = impls_for(kind, plan)
    pools: dict[str, Pool] = {}
    try:
        with phases(f"{kind} x{n}: start workers"):
            pools.update((impl, Pool(kind, impl, n, out)) for impl in impls)
            # Parked at the first run's gate once up, so the runs time no start-up.
            gates = {impl: pools[impl].hold() for impl in impls}
        with phases(f"{kind} x{n}: throughput, {reps} reps of {chains} chains"):
            for rep in range(reps):
                # Interleaved, so a slow moment of the machine hits every contender.
                for impl in impls:
                    row = throughput(
                        pools[impl], timings, chains, plan["steps"], gates.pop(impl, None)
                    )
                    row.update(impl=impl)
                    add_row(result, row, kind, n, rep, chains, reps)
                for name, peer, concurrency in peer_rows:
                    run = f"r{next(_runs)}"
                    gate = jobs.queue("bench-c").connection
                    row = peers.throughput(
                        name, peer, concurrency, n, chains, plan["steps"], timings, gate, run
                    )
                    add_row(result, row, kind, n, rep, chains, reps)
        if n == 1 and kind in plan["latency_kinds"] and impls:
            with phases(f"{kind} x1: handoff latency, {reps} reps"):
                for rep in range(reps):
                    for impl in impls:
                        row = latency(pools[impl], timings, plan["latency_steps"])
                        row.update(kind=kind, impl=impl, rep=rep)
                        result["latency"].append(row)
    finally:
        for pool in pools.values():
            pool.stop()


def add_row(
    result: dict[str, Any], row: dict[str, Any], kind: str, n: int, rep: int, chains: int,
    reps: int,
) -> None:  # fmt: skip
    row.update(kind=kind, workers=n, rep=rep, chains=chains)
    result["throughput"].append(row)
    per_step = ""
    if "statements" in row:  # counted where the database is PostgreSQL
        per_step = f", {row['statements']:.1f} statements, {row['commits']:.1f} commits per step"
    say(f"{kind} x{n} ({row['impl']}) rep {rep + 1}/{reps}: {row['rate']:.0f} steps/s{per_step}")


SCALE_SWEEPS = {"SEQUENCE_RECOVER_INTERVAL": "10", "SEQUENCE_DISPATCH_GRACE": "5"}


def reset_state() -> None:
    """Empty the sequence tables and the bench's Redis database (no worker is running)."""
    with connection.cursor() as cursor:
        for model in (StepAttempt, SequenceItem, SequenceRecord, HandChain):
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(model._meta.db_table)}")
    jobs.queue("bench-c").connection.flushdb()


def scale(
    plan: dict[str, Any], out: Path, timings: Timings, result: dict[str, Any], phases: Phases
) -> None:
    """Per-step cost with many sequences in flight, and the worker's memory meanwhile."""
    windows = plan["scale_windows"]
    for in_flight, measured in plan["scale"]:
        reset_state()
        # Sweeps with work inside the measured window (every 10 s, any outbox entry older
        # than 5 s), so the memory figure includes them: a sweep reads every sequence in
        # flight, a step only its own.
        pool = Pool("recommended", "c", 1, out, env=SCALE_SWEEPS)
        try:
            with phases(f"scale {in_flight:,}: start worker, seed"):
                run = f"r{next(_runs)}"
                key = pool.hold()
                started = time.monotonic()
                bulk_seed(Long, {"run": run, "count": 0}, in_flight, pool.queue)
                seeded = time.monotonic() - started
                rows = SequenceRecord.objects.filter(status="pending").count()
            with phases(f"scale {in_flight:,}: {measured:,} steps"):
                rss_before = procs.rss_kib(pool.pids[0])
                cpu_before = pool.cpu()
                pool.release(key)
                # Memory once warm (caches filled) too, to tell growth that stops from a leak.
                warm = min(plan.get("scale_warm", 1000), measured // 2)
                timings.wait(run, warm, timeout=600, pools=[pool])
                rss_warm = procs.rss_kib(pool.pids[0])
                lines = timings.wait(run, measured, timeout=600, pools=[pool])
                rss_after = procs.rss_kib(pool.pids[0])
                cpu_ms = (pool.cpu() - cpu_before) / len(lines) * 1000
        finally:
            pool.stop()
        starts = sorted(line[2] for line in lines)[:measured]
        size = len(starts) // windows
        costs = [
            (starts[(w + 1) * size - 1] - starts[w * size]) / (size - 1) * 1000
            for w in range(windows)
        ]
        result["scale"].append({
            "in_flight": in_flight, "rows_pending": rows, "steps": measured,
            "step_ms": costs, "rss_before_kib": rss_before, "rss_after_kib": rss_after,
            "rss_warm_kib": rss_warm, "warm_steps": warm, "cpu_ms": cpu_ms,
            "seed_seconds": seeded,
        })  # fmt: skip
        say(f"scale {in_flight}: {statistics.median(costs):.2f} ms/step, "
            f"RSS {rss_before // 1024} -> {rss_after // 1024} MiB")  # fmt: skip
    reset_state()


def profile_steps(
    plan: dict[str, Any], out: Path, timings: Timings, result: dict[str, Any]
) -> None:
    """Sample one recommended worker running (c) with py-spy; sort the samples by phase."""
    from bench import profile

    if not profile.available():
        say("py-spy is not installed: no profile (pip install py-spy)")
        return
    reset_state()
    pool = Pool("recommended", "c", 1, out)
    try:
        run = f"r{next(_runs)}"
        key = pool.hold()
        seed("c", run, plan["profile_chains"], plan["steps"], pool.queue)
        pool.release(key)
        began = time.time()
        raw = profile.record(pool.pids[0], plan["profile_seconds"], out)
        ended = time.time()
    finally:
        pool.stop()
    timings.wait(run, 0, timeout=1)
    lines = timings.lines.get(run, [])
    steps = sum(1 for line in lines if began <= line[2] < ended)
    # A worker that ran out of work idled in the sample: its shares would be skewed.
    ran_out = len(lines) >= plan["profile_chains"] * plan["steps"]
    result["profile"] = {
        **profile.classify(raw), "steps": steps, "seconds": ended - began, "ran_out": ran_out,
    }  # fmt: skip
    say(f"profile: {steps} steps in {ended - began:.1f}s sampled")
    if ran_out:
        say("profile: the worker ran out of work before the sample ended; raise profile_chains")
    reset_state()


def queries(result: dict[str, Any]) -> None:
    """Queries to start a sequence and to run each step, run in this process."""
    from sequence.runner import run_step

    q = jobs.queue("bench-q")
    q.empty()
    # As a view in autocommit mode starts one; then inside a transaction, where the
    # first step must be queued only once the transaction commits.
    with CaptureQueriesContext(connection) as started:
        seq = Five.start({"run": "queries", "count": 0}, queue="bench-q")
    enqueues = q.count
    with transaction.atomic():
        Five.start({"run": "queries", "count": 0}, queue="bench-q")
        queued_before_commit = q.count - enqueues
    queued_after_commit = q.count - enqueues
    q.empty()
    per_step = []
    for index in range(5):
        epoch = SequenceRecord.objects.get(pk=seq.id).epoch
        with CaptureQueriesContext(connection) as step:
            run_step(seq.id, index, epoch)
        per_step.append(len(step.captured_queries))
    assert SequenceRecord.objects.get(pk=seq.id).status == "completed"
    result["queries"] = {
        "start": len(started.captured_queries),
        "start_enqueues": enqueues,
        "start_queued_before_commit": queued_before_commit,
        "start_queued_after_commit": queued_after_commit,
        "start_sql": [q["sql"][:120] for q in started.captured_queries],
        "per_step": per_step,
        "step_sql": [q["sql"][:120] for q in step.captured_queries],
    }
    q.empty()


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    out_file = Path(sys.argv[2])
    out = out_file.parent
    timings = Timings(out / f"timings-{connection.vendor}.log")
    os.environ["BENCH_TIMING_FILE"] = str(timings.path)
    if connection.vendor == "postgresql":  # the workers count their statements (bench.sqlcount)
        os.environ["BENCH_SQLCOUNT_DIR"] = str(out)
    phases = Phases(f"  [{connection.vendor}] ")
    result: dict[str, Any] = {
        "vendor": connection.vendor,
        "db_version": ".".join(map(str, connection.Database.sqlite_version_info))
        if connection.vendor == "sqlite"
        else str(connection.cursor().connection.info.server_version),
        "throughput": [],
        "latency": [],
        "scale": [],
        "phases": phases.done,
    }
    reset_state()
    if plan.get("queries", True):
        with phases("queries"):
            queries(result)
    if plan.get("matrix", True):
        matrix(plan, out, timings, result, phases)
    if plan.get("profile_seconds"):
        with phases("profile"):
            profile_steps(plan, out, timings, result)
    if plan.get("scale") and plan.get("scale_vendor") in (None, connection.vendor):
        scale(plan, out, timings, result, phases)
    waiting.run(
        plan, out, result, lambda: Pool("recommended", "c", 1, out), reset_state, say, phases
    )
    if plan.get("foreach"):
        fanout.run(
            plan, result, timings, lambda: Pool("recommended", "c", 2, out),
            lambda pool, n: throughput(pool, timings, n // 5, 5), reset_state, say, phases,
        )  # fmt: skip
    out_file.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
