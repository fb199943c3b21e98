"""``python -m bench``: measure ``sequence`` next to hand-written chains; write RESULTS.md.

Starts its own Redis, uses a SQLite file (WAL) and, when reachable, PostgreSQL, runs
one driver process per database (``bench.driver``) and after each the worker stop time
(``bench.stopping``); on PostgreSQL the driver also runs the peers, DBOS and
django-absurd (``bench.peers``), in the same repetitions as the others. Then Celery's
chain for reference (when Celery is installed) and the admin list page on a million rows, and writes ``bench/RESULTS.md`` from what it
measured. Prints how long each phase of its own run took, and the total, as it goes.

Environment: BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
names a PostgreSQL server where the bench may create and drop its own databases.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import procs
from bench.measure import Phases
from scripts.redis_server import RedisServerError, Server

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
PG_NAMES = ("bench_sequence", "bench_sequence_admin")

# The cost of waiting (bench.waiting): sleepers' wake-up lateness on one idle worker;
# a wake pass and a sweep with many asleep against none. And start_many against start.
WAITING = {"lateness": 1000, "holding": 100_000, "holding_reps": 20}
START_MANY = {"start_many": 10_000}
# A ForEach of 10,000 no-op elements against as many (c) steps, on 2 recommended workers.
FOREACH = {"foreach": 10_000, "foreach_reps": 1}
# How long a worker takes to exit: stops per worker class, idle and --burst, the workers
# signalled (or released) stop_gap seconds apart. One at a time would take about a second
# per stop (RQ's scheduler looks for its stop once a second); this overlaps a few.
WORKER_STOP = {"worker_stop": 10, "stop_gap": 0.3}
# bench.stopping's own database on the bench's Redis (the drivers use 0, Celery 2): it
# flushes it, and its workers' keys never mix with what a driver left queued.
STOP_REDIS_DB = 3
# The peers on PostgreSQL, (f) DBOS and (g) django-absurd, each at one workflow at a time
# per process and at 8, on the recommended workers' 1 and 2 processes (bench.peers).
PEERS = {"peers": ["f", "g"], "peer_concurrency": [1, 8]}
# What a plan that measures only some parts turns off.
PART = {
    "reps": 1, "queries": False, "matrix": False, "profile_seconds": 0, "scale": [],
    "celery": False, "admin": False, "part": True,
}  # fmt: skip

PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "reps": 3,
        "chains": 200,
        "steps": 5,
        # Chains per worker class: the slower classes run fewer (rates are rates).
        "kind_chains": {"recommended": 200, "simple": 30, "fork": 12},
        "kinds": [["recommended", [1, 2]], ["simple", [1]], ["fork", [1]]],
        "latency_kinds": ["recommended"],
        "latency_steps": 50,
        # (in flight, steps measured), on one database (SQLite unless --scale-on).
        # 11,000 at 10,000 in flight: memory is compared over the 10,000 after warm-up.
        "scale": [[100, 1000], [10000, 11000]],
        "scale_warm": 1000,
        "scale_windows": 5,
        "profile_seconds": 8,
        # Enough work to keep the worker busy past the sample (the driver checks).
        "profile_chains": 1000,
        "admin_rows": 1_000_000,
        "admin_reps": 5,
        "celery": True,
        **WAITING,
        **START_MANY,
        **FOREACH,
        **WORKER_STOP,
        **PEERS,
    },
    "quick": {
        "reps": 1,
        "chains": 40,
        "steps": 5,
        "kind_chains": {"recommended": 40, "simple": 20, "fork": 10},
        "kinds": [["recommended", [1, 2]], ["simple", [1]], ["fork", [1]]],
        "latency_kinds": ["recommended"],
        "latency_steps": 50,
        "scale": [[100, 500], [1000, 1000]],
        "scale_windows": 3,
        "profile_seconds": 3,
        "profile_chains": 400,
        "admin_rows": 20_000,
        "admin_reps": 3,
        "celery": True,
        "lateness": 200,
        "holding": 10_000,
        "holding_reps": 5,
        "start_many": 1000,
        "foreach": 1000,
        "worker_stop": 3,
        "stop_gap": 0.3,
        **PEERS,
    },
    # Parts, run alone (``--plan waiting,start_many``): everything else is off.
    "waiting": {**PART, **WAITING},
    "start_many": {**PART, **START_MANY},
    "foreach": {**PART, **FOREACH},
    "worker_stop": {**PART, **WORKER_STOP},
    # The peers alone (PostgreSQL), on a small size: `--plan peers --only postgresql`.
    "peers": {
        **PART,
        **PEERS,
        "matrix": True,
        "own": False,
        "chains": 20,
        "steps": 5,
        "kinds": [["recommended", [1, 2]]],
        "kind_chains": {"recommended": 20},
        "latency_kinds": [],
    },
}


def say(message: str) -> None:
    print(message, flush=True)


def postgres_server(only: set[str]) -> Any | None:
    """An autocommit connection to the PostgreSQL server; None if it is unreachable."""
    if "postgresql" not in only:
        return None
    base = os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG)
    try:
        import psycopg

        parts = urlsplit(base)
        return psycopg.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
            user=parts.username or "postgres", password=parts.password or None,
            dbname=parts.path.lstrip("/") or "postgres", autocommit=True, connect_timeout=3,
        )  # fmt: skip
    except Exception as exc:
        say(f"PostgreSQL not reachable at {base} ({exc}); measuring SQLite only.")
        return None


def pg_url(name: str) -> str:
    parts = urlsplit(os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG))
    return urlunsplit(parts._replace(path=f"/{name}"))


def db_env(base: dict[str, str], vendor: str, target: str) -> dict[str, str]:
    env = dict(base)
    env.pop("DATABASE_URL", None)
    env.pop("SEQUENCE_DB_NAME", None)
    if vendor == "postgresql":
        env["DATABASE_URL"] = target
    else:
        env["SEQUENCE_DB_NAME"] = target
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float) -> None:
    """Run a bench process in its own session; kill its group if it overruns."""
    run_together([(cmd, env)], timeout)


def run_together(jobs: Sequence[tuple[list[str], dict[str, str]]], timeout: float) -> None:
    """Run set-up processes side by side (never measurements); fail if any fails."""
    started = [
        (cmd, subprocess.Popen(cmd, cwd=procs.ROOT, env=env, start_new_session=True))
        for cmd, env in jobs
    ]
    deadline = time.monotonic() + timeout
    try:
        for cmd, proc in started:
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise SystemExit(f"{shlex.join(cmd)} did not finish in {timeout:.0f}s") from None
            if code != 0:
                raise SystemExit(f"{shlex.join(cmd)} failed with exit code {code}")
    finally:
        for _, proc in started:
            procs.kill(proc)


def setup_databases(env: dict[str, str], only: set[str], admin: bool) -> list[tuple[str, str, str]]:
    """Create and migrate the bench's databases: (vendor, bench target, admin target).

    The migrations run once per database server, side by side; the admin database
    (which the admin test fills with a million rows) is a copy of the freshly migrated
    bench database: SQLite's backup API, PostgreSQL's CREATE DATABASE ... TEMPLATE.
    """
    targets: list[tuple[str, str, str]] = []
    if "sqlite" in only:
        targets.append(("sqlite", str(OUT / "bench.sqlite3"), str(OUT / "admin.sqlite3")))
    server = postgres_server(only)
    if server is not None:
        targets.append(("postgresql", pg_url(PG_NAMES[0]), pg_url(PG_NAMES[1])))
    with contextlib.ExitStack() as stack:
        if server is not None:
            stack.enter_context(server)
            for name in PG_NAMES:
                server.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            server.execute(f"CREATE DATABASE {PG_NAMES[0]}")
        migrate = [sys.executable, "-m", "django", "migrate", "-v0"]
        run_together([(migrate, db_env(env, vendor, target)) for vendor, target, _ in targets], 300)
        if not admin:
            return targets
        for vendor, target, admin_target in targets:
            if vendor == "postgresql":
                assert server is not None
                server.execute(f"CREATE DATABASE {PG_NAMES[1]} TEMPLATE {PG_NAMES[0]}")
                continue
            src = stack.enter_context(contextlib.closing(sqlite3.connect(target)))
            dst = stack.enter_context(contextlib.closing(sqlite3.connect(admin_target)))
            src.backup(dst)
    return targets


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--plan",
        default="full",
        help="Sizes and repetitions (default full; quick is a smoke test: small sizes, "
        "one repetition, and it writes bench/out/RESULTS.md unless --output says otherwise). "
        "Parts, comma-separated, measure only themselves: waiting, start_many, foreach, "
        "worker_stop, peers (20 chains of 5 steps); with --output bench/RESULTS.md their sections replace theirs in the "
        "full table.",
    )
    parser.add_argument("--quick", action="store_true", help="Same as --plan quick.")
    parser.add_argument(
        "--only", default="sqlite,postgresql", help="Databases, comma-separated (default both)."
    )
    parser.add_argument("--no-celery", action="store_true", help="Skip Celery's chain.")
    parser.add_argument("--no-admin", action="store_true", help="Skip the admin list page.")
    parser.add_argument("--no-scale", action="store_true", help="Skip the scale test.")
    parser.add_argument(
        "--scale-on", default="sqlite", help="The database of the scale test (default sqlite)."
    )
    parser.add_argument(
        "--output",
        help="Where to write the table (default bench/RESULTS.md for the full plan, which "
        "also refreshes the README's headline; bench/out/RESULTS.md for another plan).",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Write the table again from the last run's bench/out/results.json.",
    )
    args = parser.parse_args()
    if args.quick:
        args.plan = "quick"
    names = args.plan.split(",")
    unknown = [name for name in names if name not in PLANS]
    if unknown or (len(names) > 1 and {"full", "quick"} & set(names)):
        parser.error(
            f"--plan {args.plan!r}: give full, quick, or parts among "
            f"{', '.join(n for n in PLANS if PLANS[n].get('part'))} (comma-separated)."
        )
    if args.output is None:
        args.output = str(HERE / "RESULTS.md" if args.plan == "full" else OUT / "RESULTS.md")
    return args


def worker_stop(plan_file: Path, vendor: str, env: dict[str, str]) -> Any:
    """The worker stop time on one database, measured in a process of its own
    (``bench.stopping``), after the driver: its workers then have the machine."""
    out_file = OUT / f"stop-{vendor}.json"
    run([sys.executable, "-m", "bench.stopping", str(plan_file), str(out_file)], env, 600)
    return json.loads(out_file.read_text())


def write_table(results: dict[str, Any], output: Path) -> None:
    """Write the table, or exit non-zero saying why not (the figures stay in results.json)."""
    from bench.report import splice, write

    try:
        if results["plan"].get("part"):
            splice(results, output)
        else:
            write(results, output)
        if "## Targets" not in output.read_text():
            raise RuntimeError("the written file has no Targets section")
    except Exception as exc:
        raise SystemExit(
            f"bench: FAILED to write {output}: {exc!r}. The figures are kept in "
            f"{OUT / 'results.json'}; `python -m bench --report-only` writes the table again."
        ) from exc


def summary(phases: Phases, drivers: dict[str, list[list[Any]]], total: float) -> None:
    say("== where the bench's time went")
    for name, seconds in phases.done:
        say(f"{seconds:7.1f}s  {name}")
        vendor = name.split(":")[0]
        if name.endswith(": driver") and vendor in drivers:
            for sub, sub_seconds in drivers[vendor]:
                say(f"{sub_seconds:7.1f}s    {sub}")
    say(f"{total:7.1f}s  total")


def main() -> None:
    args = parse_args()
    if args.report_only:
        write_table(json.loads((OUT / "results.json").read_text()), Path(args.output))
        say(f"Wrote {args.output}")
        return
    plan: dict[str, Any] = {}
    for name in args.plan.split(","):
        plan.update(PLANS[name])
    if not plan.get("admin", True):
        args.no_admin = True
    if args.no_scale:
        plan["scale"] = []
    plan["scale_vendor"] = args.scale_on
    only = set(args.only.split(","))
    started = time.monotonic()
    phases = Phases("")
    drivers: dict[str, list[list[Any]]] = {}

    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()
    pid_file = OUT / "pids"
    plan_file = OUT / "plan.json"
    plan_file.write_text(json.dumps(plan))
    results: dict[str, Any] = {"plan": plan, "databases": [], "celery": None, "admin": []}
    redis: Server | None = None
    ok = False
    try:
        with phases("setup: Redis, databases, migrations"):
            try:  # the bench's own Redis: no persistence, stopped by its pid at the end
                redis = Server(install=True)
            except RedisServerError as exc:
                raise SystemExit(f"bench: {exc}") from None
            redis_version = redis.version
            say(f"Redis {redis_version} on port {redis.port}")
            env = dict(os.environ)
            env.update(
                DJANGO_SETTINGS_MODULE="bench.settings",
                REDIS_URL=redis.url(0),
                BENCH_PID_FILE=str(pid_file),
                PYTHONPATH=str(procs.ROOT),
                SEQUENCE_VAR_DIR=str(OUT),
            )
            targets = setup_databases(env, only, admin=not args.no_admin)
        for vendor, target, _ in targets:
            with phases(f"{vendor}: driver"):
                out_file = OUT / f"driver-{vendor}.json"
                denv = db_env(env, vendor, target)
                run(
                    [sys.executable, "-m", "bench.driver", str(plan_file), str(out_file)],
                    denv,
                    1200,
                )
                results["databases"].append(json.loads(out_file.read_text()))
                drivers[vendor] = results["databases"][-1].get("phases", [])
            if plan.get("worker_stop"):
                with phases(f"{vendor}: worker stop time"):
                    results["databases"][-1]["worker_stop"] = worker_stop(
                        plan_file, vendor, dict(denv, REDIS_URL=redis.url(STOP_REDIS_DB))
                    )
        if plan["celery"] and not args.no_celery:
            try:
                import celery  # noqa: F401
            except ImportError:
                say("== Celery is not installed: skipping (d); pip install celery to include it")
            else:
                with phases("celery: chain (d)"):
                    out_file = OUT / "celery.json"
                    cenv = dict(env, REDIS_URL=redis.url(2))
                    run(
                        [sys.executable, "-m", "bench.celery_chain", str(plan_file), str(out_file)],
                        cenv,
                        600,
                    )
                    results["celery"] = json.loads(out_file.read_text())
        if not args.no_admin and targets:
            admin = [sys.executable, "-m", "bench.admin_page"]
            files = {vendor: OUT / f"admin-{vendor}.json" for vendor, _, _ in targets}
            with phases(f"admin: fill {plan['admin_rows']:,} rows per database, side by side"):
                run_together(
                    [
                        ([*admin, "fill", str(plan_file), str(files[vendor])],
                         db_env(env, vendor, admin_target))
                        for vendor, _, admin_target in targets
                    ],
                    900,
                )  # fmt: skip
            for vendor, _, admin_target in targets:
                with phases(f"admin: list page on {vendor}"):
                    run(
                        [*admin, "measure", str(plan_file), str(files[vendor])],
                        db_env(env, vendor, admin_target),
                        300,
                    )
                    results["admin"].append(json.loads(files[vendor].read_text()))
        ok = True
    finally:
        procs.kill_recorded(pid_file)
        if redis is not None:
            redis.stop()
        elapsed = time.monotonic() - started
        if not ok:
            summary(phases, drivers, elapsed)
            say(f"== bench FAILED after {elapsed:.0f}s; nothing written")
    results["elapsed"] = elapsed
    results["phases"] = phases.done
    results["driver_phases"] = drivers
    results["redis_version"] = redis_version
    results["command"] = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    write_table(results, Path(args.output))
    summary(phases, drivers, time.monotonic() - started)
    say(f"== bench: wrote {args.output} in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
