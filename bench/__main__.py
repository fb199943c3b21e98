"""``python -m bench``: measure ``sequence`` next to hand-written chains; write RESULTS.md.

Starts its own Redis, uses a SQLite file (WAL) and, when reachable, PostgreSQL, runs
one driver process per database (``bench.driver``), then Celery's chain for reference
(when Celery is installed) and the admin list page on a million rows, and writes
``bench/RESULTS.md`` from what it measured.

Environment: BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
names a PostgreSQL server where the bench may create and drop its own databases.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import procs
from scripts.redis_server import RedisServerError, Server

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"

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
        "profile_chains": 400,
        "admin_rows": 1_000_000,
        "admin_reps": 5,
        "celery": True,
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
        "profile_chains": 100,
        "admin_rows": 20_000,
        "admin_reps": 3,
        "celery": True,
    },
}


def say(message: str) -> None:
    print(message, flush=True)


def postgres_urls(only: set[str]) -> tuple[str, str] | None:
    """Create the bench's two PostgreSQL databases; None if PostgreSQL is unreachable."""
    if "postgresql" not in only:
        return None
    base = os.environ.get("BENCH_DATABASE_URL", DEFAULT_PG)
    try:
        import psycopg

        parts = urlsplit(base)
        conn = psycopg.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
            user=parts.username or "postgres", password=parts.password or None,
            dbname=parts.path.lstrip("/") or "postgres", autocommit=True, connect_timeout=3,
        )  # fmt: skip
    except Exception as exc:
        say(f"PostgreSQL not reachable at {base} ({exc}); measuring SQLite only.")
        return None
    urls = []
    with conn:
        for name in ("bench_sequence", "bench_sequence_admin"):
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
            urls.append(urlunsplit(parts._replace(path=f"/{name}")))
    return urls[0], urls[1]


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
    proc = subprocess.Popen(cmd, cwd=procs.ROOT, env=env, start_new_session=True)
    try:
        if proc.wait(timeout=timeout) != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed with exit code {proc.returncode}")
    finally:
        procs.kill(proc)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes, one repetition.")
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
        "--output", default=str(HERE / "RESULTS.md"), help="Where to write the table."
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="Write the table again from the last run's bench/out/results.json.",
    )
    args = parser.parse_args()
    if args.report_only:
        from bench.report import write

        write(json.loads((OUT / "results.json").read_text()), Path(args.output))
        return
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.no_scale:
        plan["scale"] = []
    plan["scale_vendor"] = args.scale_on
    only = set(args.only.split(","))
    started = time.monotonic()

    OUT.mkdir(exist_ok=True)
    for old in OUT.iterdir():
        if old.is_file():
            old.unlink()
    pid_file = OUT / "pids"
    plan_file = OUT / "plan.json"
    plan_file.write_text(json.dumps(plan))
    results: dict[str, Any] = {"plan": plan, "databases": [], "celery": None, "admin": []}

    try:  # the bench's own Redis: no persistence, stopped by its pid at the end
        redis = Server(install=True)
    except RedisServerError as exc:
        raise SystemExit(f"bench: {exc}") from None
    say(f"Redis {redis.version} on port {redis.port}")
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="bench.settings",
        REDIS_URL=redis.url(0),
        BENCH_PID_FILE=str(pid_file),
        PYTHONPATH=str(procs.ROOT),
        SEQUENCE_VAR_DIR=str(OUT),
    )
    try:
        targets: list[tuple[str, str, str]] = []
        if "sqlite" in only:
            targets.append(("sqlite", str(OUT / "bench.sqlite3"), str(OUT / "admin.sqlite3")))
        pg = postgres_urls(only)
        if pg is not None:
            targets.append(("postgresql", *pg))
        for vendor, target, admin_target in targets:
            say(f"== {vendor}: migrating")
            denv = db_env(env, vendor, target)
            run([sys.executable, "-m", "django", "migrate", "-v0"], denv, 300)
            out_file = OUT / f"driver-{vendor}.json"
            run([sys.executable, "-m", "bench.driver", str(plan_file), str(out_file)], denv, 1200)
            results["databases"].append(json.loads(out_file.read_text()))
            if not args.no_admin:
                say(f"== {vendor}: admin list page on {plan['admin_rows']:,} rows")
                aenv = db_env(env, vendor, admin_target)
                run([sys.executable, "-m", "django", "migrate", "-v0"], aenv, 300)
                out_file = OUT / f"admin-{vendor}.json"
                run(
                    [sys.executable, "-m", "bench.admin_page", str(plan_file), str(out_file)],
                    aenv,
                    900,
                )
                results["admin"].append(json.loads(out_file.read_text()))
        if plan["celery"] and not args.no_celery:
            try:
                import celery  # noqa: F401
            except ImportError:
                say("== Celery is not installed: skipping (d); pip install celery to include it")
            else:
                say("== Celery chain (d)")
                out_file = OUT / "celery.json"
                cenv = dict(env, REDIS_URL=redis.url(2))
                run(
                    [sys.executable, "-m", "bench.celery_chain", str(plan_file), str(out_file)],
                    cenv,
                    600,
                )
                results["celery"] = json.loads(out_file.read_text())
    finally:
        procs.kill_recorded(pid_file)
        redis.stop()
    results["elapsed"] = time.monotonic() - started
    results["redis_version"] = redis.version
    results["command"] = shlex.join(["python", "-m", "bench", *sys.argv[1:]])
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    from bench.report import write

    write(results, Path(args.output))
    say(f"Wrote {args.output} in {results['elapsed']:.0f}s")


if __name__ == "__main__":
    main()
