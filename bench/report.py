"""Turns the measured figures into ``bench/RESULTS.md``. Every number comes from a run."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import absurd_chain, dbos_chain
from bench.peers import SETTLE

NAMES = {
    "a": "(a) bare RQ",
    "b": "(b) hand-written Django",
    "c": "(c) sequence",
    "d": "(d) Celery chain",
    "e": "(e) sequence, inline steps",
    "f1": "(f) DBOS, 1 workflow at a time per process",
    "f8": "(f) DBOS, 8 workflows at a time per process",
    "g1": "(g) django-absurd, concurrency 1",
    "g8": "(g) django-absurd, concurrency 8",
}
# Each peer at its natural concurrency, which the targets compare against.
NATURAL = {"f": "f8", "g": "g8"}
KINDS = {
    "recommended": "recommended (`manage.py sequence worker`)",
    "simple": "RQ `SimpleWorker`",
    "fork": "RQ `Worker` (forks per job)",
}
VENDORS = {"sqlite": "SQLite (file, WAL)", "postgresql": "PostgreSQL"}


def med(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def cell(values: list[float], fmt: str = "{:.0f}") -> str:
    """Median, with the spread (min-max) of the repetitions."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def ratio_cell(top: list[float], bottom: list[float]) -> str:
    """Ratio of the medians, with the spread of the ratios of paired repetitions."""
    if not top or not bottom:
        return "-"
    value = med(top) / med(bottom)
    pairs = [t / b for t, b in zip(top, bottom, strict=False)]
    if len(pairs) < 2:
        return f"{value:.2f}x"
    return f"**{value:.2f}x** ({min(pairs):.2f}-{max(pairs):.2f})"


def machine() -> list[str]:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
        memory = f"{mem_kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown memory"
    return [
        f"{os.cpu_count()} cores ({cpu}), {memory}",
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    ]


def versions(results: dict[str, Any]) -> str:
    found = []
    for name in (
        "django", "rq", "django-rq", "redis", "psycopg", "celery", "dbos", "django-absurd",
        "django-rq-sequence",
    ):  # fmt: skip
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    found.append(f"Redis server {results['redis_version']}")
    for db in results["databases"]:
        found.append(f"{VENDORS[db['vendor']].split(' ')[0]} {db['db_version']}")
    return ", ".join(found)


def rows(db: dict[str, Any], key: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in db[key] if all(r.get(k) == v for k, v in match.items())]


def rates(db: dict[str, Any], kind: str, workers: int, impl: str) -> list[float]:
    found = rows(db, "throughput", kind=kind, workers=workers, impl=impl)
    return [r["rate"] for r in sorted(found, key=lambda r: r["rep"])]


def cpu(db: dict[str, Any], kind: str, workers: int, impl: str) -> list[float]:
    found = rows(db, "throughput", kind=kind, workers=workers, impl=impl)
    return [r["cpu_ms"] for r in sorted(found, key=lambda r: r["rep"]) if "cpu_ms" in r]


def celery_rates(results: dict[str, Any], workers: int) -> list[float]:
    if not results.get("celery"):
        return []
    return [r["rate"] for r in results["celery"]["throughput"] if r["workers"] == workers]


class Targets:
    """Collects each target's verdict for the summary at the top."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []

    def add(self, target: str, measured: str, ok: bool | None) -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "**NOT met**")
        self.lines.append((target, measured, verdict))


def throughput_section(results: dict[str, Any], targets: Targets) -> list[str]:
    plan = results["plan"]
    out = [
        "## Throughput under load",
        "",
        f"{plan['chains']} chains x {plan['steps']} steps queued at once, then the workers "
        "released together; steps per second from the first step's start to the last "
        "step's end. Worker: the recommended set-up for every contender (see below). "
        "Cells: median (min-max) of the repetitions; ratios: ratio of medians "
        "(min-max of the paired repetitions).",
        "",
        "| database | workers | (a) bare RQ | (b) hand-written Django | (c) sequence "
        "| (c)/(b) | (c)/(a) | (d) Celery chain | (c)/(d) | (e) sequence, inline steps "
        "| (e)/(b) | (e)/(d) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for db in results["databases"]:
        for workers in sorted({r["workers"] for r in rows(db, "throughput", kind="recommended")}):
            a, b, c, e = (rates(db, "recommended", workers, impl) for impl in "abce")
            d = celery_rates(results, workers)
            out.append(
                f"| {VENDORS[db['vendor']]} | {workers} | {cell(a)} | {cell(b)} | {cell(c)} "
                f"| {ratio_cell(c, b)} | {ratio_cell(c, a)} | {cell(d)} | {ratio_cell(c, d)} "
                f"| {cell(e)} | {ratio_cell(e, b)} | {ratio_cell(e, d)} |"
            )
            if b and c:
                value = med(c) / med(b)
                targets.add(
                    f"Throughput (c) >= 0.85x (b), {VENDORS[db['vendor']]}, {workers} worker(s)",
                    f"{value:.2f}x",
                    value >= 0.85,
                )
            if d and e:
                value = med(e) / med(d)
                targets.add(
                    f"Stretch: (e) sequence with inline steps beats Celery's chain, "
                    f"{VENDORS[db['vendor']]}, {workers} worker(s)",
                    f"{value:.2f}x ((c) without them: {med(c) / med(d):.2f}x)"
                    if c
                    else f"{value:.2f}x",
                    value > 1,
                )
    if results.get("celery"):
        out += ["", f"(d) {results['celery']['note']}"]
    out += [
        "",
        "(e) is (c) on workers with `SEQUENCE_INLINE_STEPS = 4`: a job runs up to four "
        "next steps of its sequence itself, each still claimed, committed and recorded on "
        "its own (the state stays in the database); only the trip through Redis is "
        "skipped. Off by default; see docs/guarantees.md.",
    ]
    out += [
        "",
        "Worker CPU per step in the same runs (ms; user + system time of the worker "
        "processes over the run, divided by the steps): it does not count waiting, so "
        "it moves less than the rates when other programs share the machine.",
        "",
        "| database | workers | (a) bare RQ | (b) hand-written Django | (c) sequence "
        "| (b)/(c), as a rate ratio |",
        "|---|---|---|---|---|---|",
    ]
    for db in results["databases"]:
        for workers in sorted({r["workers"] for r in rows(db, "throughput", kind="recommended")}):
            a, b, c = (cpu(db, "recommended", workers, impl) for impl in "abc")
            if not c:
                continue
            out.append(
                f"| {VENDORS[db['vendor']]} | {workers} | {cell(a, '{:.2f}')} "
                f"| {cell(b, '{:.2f}')} | {cell(c, '{:.2f}')} | {ratio_cell(b, c)} |"
            )
    return out


def peers_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """The peers beside (b), (c) and (e) on PostgreSQL, with each contender's statements."""
    dbs = [db for db in results["databases"] if any("statements" in r for r in db["throughput"])]
    if not dbs:
        return []
    plan = results["plan"]
    peers = [name for name in NAMES if name[0] in plan.get("peers", [])]
    out = [
        "## Peers on PostgreSQL",
        "",
        "(f) DBOS and (g) django-absurd, the durable engines on PostgreSQL, in the same "
        "repetitions as the others (interleaved with them), on the same chains "
        f"({plan['chains']} x {plan['steps']} steps, queued while the workers waited at a "
        "gate) with the same step body and timing file. Each chain is one workflow (DBOS) "
        "or task (django-absurd) whose steps are checkpointed steps, run in one process "
        "with no queue trip between them. Each repetition of a peer runs in a database of "
        "its own, copied from a freshly migrated template and dropped after it. "
        f"Settings: {'; '.join(PEER_NOTES)}. "
        "Workers: processes, as for the others; at 1 and at 8 workflows at a time per "
        "process (DBOS's default is no limit, django-absurd's is 1). Steps/s: median "
        "(min-max); ratios: (c) sequence, default settings, over the peer.",
        "",
        "| workers | (c) sequence | (e) sequence, inline steps | "
        + " | ".join(NAMES[p] for p in peers)
        + " | "
        + " | ".join(f"(c)/({p})" for p in peers)
        + " |",
        "|---|---|---|" + "---|" * (2 * len(peers)),
    ]
    for db in dbs:
        for workers in sorted({r["workers"] for r in rows(db, "throughput", kind="recommended")}):
            c, e = rates(db, "recommended", workers, "c"), rates(db, "recommended", workers, "e")
            got = {p: rates(db, "recommended", workers, p) for p in peers}
            out.append(
                f"| {workers} | {cell(c)} | {cell(e)} | "
                + " | ".join(cell(got[p]) for p in peers)
                + " | "
                + " | ".join(ratio_cell(c, got[p]) for p in peers)
                + " |"
            )
            for peer, floor in (("g", 1.0), ("f", 1.5)):
                natural = got.get(NATURAL[peer])
                if c and natural:
                    value = med(c) / med(natural)
                    targets.add(
                        f"(c) sequence >= {floor}x {NAMES[NATURAL[peer]]}, PostgreSQL, "
                        f"{workers} worker(s)",
                        f"{value:.2f}x",
                        value >= floor,
                    )
    out += [
        "",
        "Statements and commits per step, every contender on PostgreSQL in the same runs "
        "(the recommended worker for (a)-(e)). Counted in each worker process "
        "(`bench/sqlcount.py`): psycopg 3 is wrapped so that each query sent counts as a "
        "statement (each `execute`, and the BEGIN, COMMIT, ROLLBACK psycopg sends itself), "
        "and each COMMIT, or statement in autocommit mode outside a transaction block, "
        "as a commit (what the server's `xact_commit` counts); from the workers' release to "
        f"{SETTLE} s after the last step's timing line, divided by the steps. Polls of "
        "an idle or waiting worker in that window count too. `pg_stat_database` is not "
        "used: a backend reports its figures up to 10 s late. (a) touches no database.",
        "",
        "| workers | contender | steps/s | statements per step | commits per step |",
        "|---|---|---|---|---|",
    ]
    for db in dbs:
        for workers in sorted({r["workers"] for r in rows(db, "throughput", kind="recommended")}):
            for impl in NAMES:
                found = [
                    r
                    for r in rows(db, "throughput", kind="recommended", workers=workers, impl=impl)
                    if "statements" in r
                ]
                if found:
                    out.append(
                        f"| {workers} | {NAMES[impl]} | {cell([r['rate'] for r in found])} "
                        f"| {cell([r['statements'] for r in found], '{:.1f}')} "
                        f"| {cell([r['commits'] for r in found], '{:.1f}')} |"
                    )
    return out


PEER_NOTES = [
    f"DBOS polls its queue every {dbos_chain.POLL} s (`polling_interval_sec`; its default "
    "is 1 s), each process with its own `executor_id` and the same `application_version`",
    f"django-absurd's `absurd_worker --poll-interval {absurd_chain.POLL}` (default 0.25 s), "
    "its loggers at WARNING (at INFO it logs every step)",
]


def worker_section(results: dict[str, Any], targets: Targets) -> list[str]:
    plan = results["plan"]
    out = [
        "## Worker classes",
        "",
        "One worker; chains of "
        f"{plan['steps']} steps: {plan['kind_chains']['recommended']} on the recommended "
        f"worker, {plan['kind_chains']['simple']} on `SimpleWorker`, "
        f"{plan['kind_chains']['fork']} on the forking worker. The recommended set-up "
        "is `manage.py sequence worker`: `SequenceWorker` (RQ's `SimpleWorker`, which runs "
        "jobs in the worker process and so keeps its database connection, plus "
        "`close_old_connections()` around each job), JSON payloads, the allow-listing job "
        "class `SequenceJob`, RQ's scheduler for retry delays, and the recovery sweep. "
        "For (a) and (b) the same worker class runs with RQ's plain job class.",
        "",
        "| database | worker class | (a) bare RQ | (b) hand-written Django | (c) sequence "
        "| (c)/(b) | (c) vs (c) on the forking worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for db in results["databases"]:
        fork_c = rates(db, "fork", 1, "c")
        for kind in ("fork", "simple", "recommended"):
            a, b, c = (rates(db, kind, 1, impl) for impl in "abc")
            if not c:
                continue
            out.append(
                f"| {VENDORS[db['vendor']]} | {KINDS[kind]} | {cell(a)} | {cell(b)} | {cell(c)} "
                f"| {ratio_cell(c, b)} | {ratio_cell(c, fork_c)} |"
            )
        rec_c = rates(db, "recommended", 1, "c")
        if rec_c and fork_c:
            value = med(rec_c) / med(fork_c)
            targets.add(
                f"Recommended worker >= 2.5x RQ's forking worker, {VENDORS[db['vendor']]}",
                f"{value:.2f}x",
                value >= 2.5,
            )
    return out


def latency_section(results: dict[str, Any], targets: Targets) -> list[str]:
    plan = results["plan"]
    out = [
        "## Handoff latency, unloaded",
        "",
        f"One chain of {plan['latency_steps']} steps on one idle recommended worker; the "
        "handoff is the time from the end of step i's body to the start of step i+1's "
        "body (commit, enqueue, dequeue, claim). Milliseconds; median (min-max) over "
        "the repetitions of each run's median and 95th percentile.",
        "",
        "| database | contender | median ms | p95 ms | median vs (b) |",
        "|---|---|---|---|---|",
    ]
    sources: list[tuple[str, Callable[[str], list[dict[str, Any]]]]] = []
    for db in results["databases"]:
        sources.append((VENDORS[db["vendor"]], lambda impl, db=db: rows(db, "latency", impl=impl)))
    for label, get in sources:
        base = [r["median_ms"] for r in get("b")]
        for impl in "abce":
            found = get(impl)
            if not found:
                continue
            medians = [r["median_ms"] for r in found]
            out.append(
                f"| {label} | {NAMES[impl]} | {cell(medians, '{:.2f}')} "
                f"| {cell([r['p95_ms'] for r in found], '{:.2f}')} "
                f"| {ratio_cell(medians, base) if impl != 'b' else '1x'} |"
            )
            if impl == "c" and base:
                value = med(medians) / med(base)
                targets.add(
                    f"Handoff median (c) <= 1.3x (b), {label}", f"{value:.2f}x", value <= 1.3
                )
    celery = results.get("celery")
    if celery and celery.get("latency"):
        found = celery["latency"]
        out.append(
            f"| Redis only | {NAMES['d']} | {cell([r['median_ms'] for r in found], '{:.2f}')} "
            f"| {cell([r['p95_ms'] for r in found], '{:.2f}')} | - |"
        )
    return out


def queries_section(results: dict[str, Any], targets: Targets) -> list[str]:
    out = [
        "## Database queries",
        "",
        "Counted with Django's `CaptureQueriesContext` (which counts BEGIN and COMMIT), "
        "running `sequence.runner.run_step` in the driver process on a 5-step sequence. "
        "Pinned by `tests/test_transitions.py`.",
        "",
        "| database | start a sequence | enqueues: autocommit / in a transaction before "
        "commit / after commit | per step (steps 1-5) |",
        "|---|---|---|---|",
    ]
    for db in results["databases"]:
        q = db.get("queries")
        if not q:
            continue
        enqueues = (
            f"{q['start_enqueues']} / {q['start_queued_before_commit']} / "
            f"{q['start_queued_after_commit']}"
        )
        out.append(
            f"| {VENDORS[db['vendor']]} | {q['start']} | {enqueues} "
            f"| {', '.join(map(str, q['per_step']))} |"
        )
        targets.add(
            f"Queries per step constant and <= 5, {VENDORS[db['vendor']]}",
            ", ".join(map(str, q["per_step"])),
            max(q["per_step"]) <= 5 and len(set(q["per_step"])) == 1,
        )
        one_after_commit = (
            q["start_enqueues"] == 1
            and q["start_queued_before_commit"] == 0
            and q["start_queued_after_commit"] == 1
        )
        targets.add(
            f"Start <= 3 queries, one enqueue, after commit, {VENDORS[db['vendor']]}",
            f"{q['start']} queries; enqueues {enqueues}",
            q["start"] <= 3 and one_after_commit,
        )
    for db in results["databases"][:1]:
        q = db.get("queries")
        if q:
            out += ["", f"The statements of one step on {VENDORS[db['vendor']]}:", ""]
            out += [
                f"{i}. `{' '.join(sql.split())[:100]}`" for i, sql in enumerate(q["step_sql"], 1)
            ]
    return out


def scale_section(results: dict[str, Any], targets: Targets) -> list[str]:
    plan = results["plan"]
    if not any(db["scale"] for db in results["databases"]):
        return []
    out = [
        "## Scale: sequences in flight",
        "",
        "One recommended worker; N sequences of 40 steps started, so all N stay in flight "
        "while the measured steps run. Per-step cost: the time between consecutive step "
        f"starts, over {plan['scale_windows']} consecutive windows of the measured steps "
        "(median, min-max). Memory: the worker's resident set when it was parked at the "
        "gate (after one step), once warm, and after the measured steps. The worker runs "
        "the recovery sweep every 10 s with a 5 s grace (SEQUENCE_RECOVER_INTERVAL, "
        "SEQUENCE_DISPATCH_GRACE), so sweeps over every sequence in flight fall inside "
        "the measured steps and count in the memory figures.",
        "",
        "| database | in flight | steps measured | ms per step | vs fewest in flight "
        "| worker CPU ms per step | RSS before | RSS warm | RSS after | growth "
        "| growth once warm |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for db in results["databases"]:
        runs = db["scale"]
        if not runs:
            continue
        base = runs[0]["step_ms"]
        for run in runs:
            growth = (run["rss_after_kib"] - run["rss_before_kib"]) / 1024
            warm = run.get("rss_warm_kib")
            warm_cells = (
                f"{warm / 1024:.1f} MiB (after {run['warm_steps']:,} steps)",
                f"{(run['rss_after_kib'] - warm) / 1024:+.1f} MiB",
            ) if warm else ("-", "-")  # fmt: skip
            cpu_cell = f"{run['cpu_ms']:.2f}" if "cpu_ms" in run else "-"
            out.append(
                f"| {VENDORS[db['vendor']]} | {run['in_flight']:,} | {run['steps']:,} "
                f"| {cell(run['step_ms'], '{:.2f}')} | {ratio_cell(run['step_ms'], base)} "
                f"| {cpu_cell} | {run['rss_before_kib'] / 1024:.1f} MiB | {warm_cells[0]} "
                f"| {run['rss_after_kib'] / 1024:.1f} MiB | {growth:+.1f} MiB | {warm_cells[1]} |"
            )
        big = runs[-1]
        value = med(big["step_ms"]) / med(base)
        targets.add(
            f"Per-step cost, {big['in_flight']:,} vs {runs[0]['in_flight']:,} in flight <= 1.2x, "
            f"{VENDORS[db['vendor']]}",
            f"{value:.2f}x",
            value <= 1.2,
        )
        growth = (big["rss_after_kib"] - big["rss_before_kib"]) / 1024
        targets.add(
            f"Worker memory growth over {big['steps']:,} steps < 10 MB, {VENDORS[db['vendor']]}",
            f"{growth:+.1f} MiB",
            growth < 10,
        )
        if big.get("rss_warm_kib"):
            warm_growth = (big["rss_after_kib"] - big["rss_warm_kib"]) / 1024
            steps = big["steps"] - big["warm_steps"]
            targets.add(
                f"Worker memory growth over {steps:,} steps once warm "
                f"(after {big['warm_steps']:,}) < 10 MB, {VENDORS[db['vendor']]}",
                f"{warm_growth:+.1f} MiB",
                warm_growth < 10,
            )
    return out


def admin_section(results: dict[str, Any], targets: Targets) -> list[str]:
    if not results.get("admin"):
        return []
    out = [
        "## Admin list page",
        "",
        "`GET /admin/sequence/sequencerecord/` as a superuser with Django's test `Client`, "
        "in process, on a table of finished sequences; the first request is a warm-up. The "
        "tables are filled with one `INSERT ... SELECT` each, both databases side by side "
        "(so a fill time includes the other's competition), then each page is measured "
        "alone.",
        "",
        "| database | rows | median ms | queries | note |",
        "|---|---|---|---|---|",
    ]
    for run in results["admin"]:
        label = VENDORS[run["vendor"]]
        if run.get("skipped"):
            out.append(f"| {label} | {run['rows']:,} | - | - | {run['skipped']} |")
            targets.add(
                f"Admin list of {run['rows']:,} rows median < 300 ms, {label}", run["skipped"], None
            )
            continue
        out.append(
            f"| {label} | {run['rows']:,} | {cell(run['ms'], '{:.0f}')} | {run['queries']} "
            f"| filled in {run['fill_seconds']:.0f}s |"
        )
        value = med(run["ms"])
        targets.add(
            f"Admin list of {run['rows']:,} rows median < 300 ms, {label}",
            f"{value:.0f} ms",
            value < 300,
        )
    return out


def profile_section(results: dict[str, Any], targets: Targets) -> list[str]:
    found = [db for db in results["databases"] if db.get("profile")]
    if not found:
        return []
    from bench.profile import PHASES

    order = [name for name, _ in PHASES] + ["other"]
    out = [
        "## Where a step's time goes",
        "",
        "py-spy samples (250 Hz) of one recommended worker running (c) under load, each "
        "sample put in the phase of its innermost recognised frame; the wait columns "
        "split each phase by the leaf frame (waiting on the database or Redis, or "
        "running Python). Milliseconds per step = share x sampled time / steps run.",
        "",
    ]
    for db in found:
        prof = db["profile"]
        total, steps, seconds = prof["samples"], prof["steps"], prof["seconds"]
        per_step = seconds / steps * 1000 if steps else 0.0
        out += [
            f"**{VENDORS[db['vendor']]}**: {steps} steps in {seconds:.1f} s, "
            f"{per_step:.2f} ms per step."
            + (
                " **The worker ran out of queued steps before the sample ended, so idle "
                "waiting is over-counted; raise `profile_chains`.**"
                if prof.get("ran_out")
                else ""
            ),
            "",
            "| phase | share | ms per step | database | Redis | Python |",
            "|---|---|---|---|---|---|",
        ]
        for phase in order:
            n = prof["phases"].get(phase, 0)
            if not n:
                continue
            parts = [prof["waits"].get(f"{phase}|{k}", 0) for k in ("database", "Redis", "Python")]
            out.append(
                f"| {phase} | {n / total:.0%} | {n / total * per_step:.2f} | "
                + " | ".join(f"{p / total * per_step:.2f}" for p in parts)
                + " |"
            )
        out.append("")
    return out


def waiting_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """Wake-up lateness, and what sleepers cost the periodic passes and Redis."""
    dbs = [db for db in results["databases"] if db.get("lateness") or db.get("holding")]
    if not dbs:
        return []
    out = [
        "## The cost of waiting",
        "",
        "Wake-up lateness: sequences whose first item is `Sleep(seconds=5)`, started with "
        "`start_many` on one idle recommended worker with default settings (it wakes due "
        "sleepers every 0.5 s, `SEQUENCE_WAKE_INTERVAL`); for each, the delay from its "
        "wake-up time (`wake_at`, read from the row while it sleeps) to the start of the step "
        "after the sleep (its history row's `started_at`). Redis keys: the bench's Redis "
        "database with the worker idle, and at the moment most of them were asleep (less "
        "the jobs of sleeps not yet begun, still queued then: a key each).",
        "",
        "| database | sleepers | median ms | p95 ms | max ms | Redis keys, idle "
        "| Redis keys, most asleep |",
        "|---|---|---|---|---|---|---|",
    ]
    for db in dbs:
        late = db.get("lateness")
        if not late:
            continue
        out.append(
            f"| {VENDORS[db['vendor']]} | {late['sequences']:,} | {late['median_ms']:.0f} "
            f"| {late['p95_ms']:.0f} | {late['max_ms']:.0f} | {late['redis_keys_idle']} "
            f"| {late['redis_keys_asleep']} ({late['most_asleep']:,} asleep, "
            f"{late.get('queued_jobs_then', 0)} jobs queued) |"
        )
        targets.add(
            f"Wake-up lateness p95 < 1 s, {late['sequences']:,} sleepers, {VENDORS[db['vendor']]}",
            f"{late['p95_ms']:.0f} ms",
            late["p95_ms"] < 1000,
        )
        extra = late["redis_keys_asleep"] - late["redis_keys_idle"]
        extra -= late.get("queued_jobs_then", 0)
        targets.add(
            f"No Redis keys per sleeper, {VENDORS[db['vendor']]}",
            f"{extra:+d} keys with {late['most_asleep']:,} asleep",
            extra <= 5,
        )
    holding = [db for db in dbs if db.get("holding")]
    if holding:
        out += [
            "",
            "Holding cost: one wake pass (`sequence.engine.waiting.wake_due`) and one recovery sweep "
            "(`sequence.engine.recovery.sweep`), run in the driver process, with none asleep and "
            "then with N rows sleeping until tomorrow (made with `bulk_create`). "
            "Milliseconds, median (min-max) of the repetitions.",
            "",
            "| database | asleep | wake pass, none | wake pass, asleep | ratio | sweep, none "
            "| sweep, asleep | ratio | Redis keys, none / asleep |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for db in holding:
        h = db["holding"]
        none, asleep = h["none"], h["asleep"]
        ratios = {}
        for part in ("wake_ms", "sweep_ms"):
            ratios[part] = med(asleep[part]) / med(none[part])
        out.append(
            f"| {VENDORS[db['vendor']]} | {h['sleepers']:,} | {cell(none['wake_ms'], '{:.2f}')} "
            f"| {cell(asleep['wake_ms'], '{:.2f}')} | **{ratios['wake_ms']:.2f}x** "
            f"| {cell(none['sweep_ms'], '{:.2f}')} | {cell(asleep['sweep_ms'], '{:.2f}')} "
            f"| **{ratios['sweep_ms']:.2f}x** | {none['redis_keys_after']} / "
            f"{asleep['redis_keys_after']} |"
        )
        for part, name in (("wake_ms", "wake pass"), ("sweep_ms", "recovery sweep")):
            targets.add(
                f"One {name} with {h['sleepers']:,} asleep < 1.2x none, {VENDORS[db['vendor']]}",
                f"{ratios[part]:.2f}x",
                ratios[part] < 1.2,
            )
    return out


def start_many_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """start_many against as many start() calls, in the same run."""
    dbs = [db for db in results["databases"] if db.get("start_many")]
    if not dbs:
        return []
    out = [
        "## Starting in bulk",
        "",
        "N sequences of one step started in the driver process (no worker), once with N "
        "`start()` calls and once with one `start_many()`, each timed from the first call "
        "to the last job queued (after the commit). Round trips: commands sent to Redis "
        "on their own plus pipelines executed, counted on the queue's connection.",
        "",
        "| database | sequences | start() calls, s | start_many, s | speed-up "
        "| queries, start() / start_many | Redis round trips, start() / start_many |",
        "|---|---|---|---|---|---|---|",
    ]
    for db in dbs:
        m = db["start_many"]
        one, many = m["start"], m["start_many"]
        speedup = one["seconds"] / many["seconds"]
        out.append(
            f"| {VENDORS[db['vendor']]} | {m['sequences']:,} | {one['seconds']:.2f} "
            f"| {many['seconds']:.2f} | **{speedup:.1f}x** | {one['queries']:,} / "
            f"{many['queries']:,} | {one['round_trips']:,} / {many['round_trips']:,} |"
        )
        targets.add(
            f"start_many of {m['sequences']:,} >= 10x faster than start(), {VENDORS[db['vendor']]}",
            f"{speedup:.1f}x",
            speedup >= 10,
        )
        per_thousand = many["round_trips"] / max(1, m["sequences"] / 1000)
        targets.add(
            f"start_many <= 1 Redis round trip per 1,000 sequences, {VENDORS[db['vendor']]}",
            f"{many['round_trips']} for {m['sequences']:,}",
            per_thousand <= 1,
        )
    return out


def foreach_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """A ForEach's elements against plain steps, and its cost per element by size."""
    dbs = [db for db in results["databases"] if db.get("foreach")]
    if not dbs:
        return []
    out = [
        "## Fan-out",
        "",
        "One `ForEach` of N no-op elements (concurrency 20, results collected with `into`) "
        "on 2 recommended workers, queued while the workers were parked and then released: "
        "elements per second from the first element's start to the last one's end, against "
        "(c) steps per second on the same workers in the same run (N steps, N/5 chains of "
        "5). Per element: the workers' CPU time, and the wall time from their release to "
        "the sequence's completion (the ForEach's start and its results' write included), "
        "divided by the elements; at 100 elements the median of 5 runs per repetition. "
        "Cells: median of the repetitions.",
        "",
        "| database | elements | elements/s | (c) steps/s | ratio | CPU ms per element, "
        "N / 100 | wall ms per element, N / 100 | CPU ratio N/100 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for db in dbs:
        f = db["foreach"]
        name = VENDORS[db["vendor"]]

        def med(rows: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(row[key] for row in rows))

        rate, steps = med(f["big"], "rate"), med(f["steps"], "rate")
        ratio = rate / steps
        cpu_big, cpu_small = med(f["big"], "cpu_ms"), med(f["small"], "cpu_ms")
        wall_big, wall_small = med(f["big"], "wall_ms"), med(f["small"], "wall_ms")
        growth = cpu_big / cpu_small
        out.append(
            f"| {name} | {f['elements']:,} | {rate:.0f} | {steps:.0f} | **{ratio:.2f}x** "
            f"| {cpu_big:.2f} / {cpu_small:.2f} | {wall_big:.2f} / {wall_small:.2f} "
            f"| **{growth:.2f}x** |"
        )
        targets.add(
            f"ForEach of {f['elements']:,} elements >= 0.8x (c) steps/s, {name}",
            f"{ratio:.2f}x",
            ratio >= 0.8,
        )
        targets.add(
            f"ForEach cost per element at {f['elements']:,} <= 1.2x at 100, {name}",
            f"{growth:.2f}x (CPU; wall {wall_big / wall_small:.2f}x)",
            growth <= 1.2,
        )
    return out


def worker_stop_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """How long a worker takes to exit once it should: idle after SIGTERM, and --burst."""
    dbs = [db for db in results["databases"] if db.get("worker_stop")]
    if not dbs:
        return []
    first = dbs[0]["worker_stop"]
    out = [
        "## Worker stop time",
        "",
        "How long `manage.py sequence worker` takes to exit once it should, started from the "
        "command line on a queue of its own (so it holds that queue's scheduler lock, as a "
        f"lone worker does), {first['stops']} workers per row. Idle: from SIGTERM, sent once "
        "RQ's registry shows the worker idle, to its exit. `--burst`: from its queue "
        "emptying (the `finished_at` of the one sequence on it, which held the worker until "
        "the bench released it) to its exit. A row's workers start side by side and are then "
        f"signalled (or released) {first['gap']} s apart, so a few stops overlap (which can "
        "only lengthen them); each is timed from its own signal or release to its own exit. "
        "API.md's bound is 2 s. Seconds.",
        "",
        "| database | worker class | stop | median s | min-max s | did not exit |",
        "|---|---|---|---|---|---|",
    ]
    for db in dbs:
        stop = db["worker_stop"]
        name = VENDORS[db["vendor"]]
        for run in stop["runs"]:
            timed = [s for s in run["seconds"] if s is not None]
            spread = f"{min(timed):.2f}-{max(timed):.2f}" if timed else "-"
            median = f"{run['median']:.2f}" if run["median"] is not None else "-"
            hung = f"**{run['hung']}** (after {stop['limit']:.0f} s)" if run["hung"] else "0"
            mode = "idle, SIGTERM" if run["mode"] == "idle" else "`--burst`, queue empty"
            out.append(
                f"| {name} | `--worker-class {run['kind']}` | {mode} | {median} | {spread} "
                f"| {hung} |"
            )
        stops = sum(len(run["seconds"]) for run in stop["runs"])
        if any(run["max"] is None for run in stop["runs"]):
            measured = f"> {stop['limit']:.0f} s (a worker did not exit)"
            ok = False
        else:
            worst = max(stop["runs"], key=lambda run: run["max"])
            measured = f"{worst['max']:.2f} s ({worst['mode']}, {worst['kind']}; {stops} stops)"
            ok = worst["max"] <= 2.0
        targets.add(f"Worker stop time <= 2 s (max), {name}", measured, ok)
    return out


def run_section(results: dict[str, Any], targets: Targets) -> list[str]:
    """Where the bench's own run spent its time (not a measurement of anything compared)."""
    if not results.get("phases"):
        return []
    out = [
        "## The run itself",
        "",
        "Wall-clock seconds of each phase of this run of the bench (set-up included), as "
        "printed by `python -m bench`; the driver's phases are nested under it.",
        "",
        "| phase | seconds |",
        "|---|---|",
    ]
    drivers = results.get("driver_phases", {})
    for name, seconds in results["phases"]:
        out.append(f"| {name} | {seconds:.0f} |")
        vendor = name.split(":")[0]
        if name.endswith(": driver"):
            out += [
                f"| - {sub} | {sub_seconds:.0f} |" for sub, sub_seconds in drivers.get(vendor, [])
            ]
    out.append(f"| **total** | **{results['elapsed']:.0f}** |")
    return out


README_START = "<!-- bench:headline:start -->"
README_END = "<!-- bench:headline:end -->"


def headline(results: dict[str, Any]) -> list[str]:
    """The few ratios the README quotes, from the same figures as the table."""
    lines = [
        "| database | steps/s, 1 worker | steps/s, 2 workers | handoff latency "
        "| `sequence worker` vs RQ's forking worker | inline steps vs Celery's chain, "
        "2 workers | vs django-absurd, 8 at a time, 1 / 2 workers "
        "| vs DBOS, 8 at a time, 1 / 2 workers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for db in results["databases"]:
        cells = []
        for workers in (1, 2):
            b, c = rates(db, "recommended", workers, "b"), rates(db, "recommended", workers, "c")
            cells.append(f"{med(c) / med(b):.2f}x" if b and c else "-")
        lat_b = [r["median_ms"] for r in rows(db, "latency", impl="b")]
        lat_c = [r["median_ms"] for r in rows(db, "latency", impl="c")]
        cells.append(f"{med(lat_c) / med(lat_b):.2f}x" if lat_b and lat_c else "-")
        fork, rec = rates(db, "fork", 1, "c"), rates(db, "recommended", 1, "c")
        cells.append(f"{med(rec) / med(fork):.1f}x" if fork and rec else "-")
        e, d = rates(db, "recommended", 2, "e"), celery_rates(results, 2)
        cells.append(f"{med(e) / med(d):.2f}x" if e and d else "-")
        for peer in ("g", "f"):
            pair = []
            for workers in (1, 2):
                c = rates(db, "recommended", workers, "c")
                p = rates(db, "recommended", workers, NATURAL[peer])
                pair.append(f"{med(c) / med(p):.2f}x" if c and p else "-")
            cells.append(" / ".join(pair) if pair != ["-", "-"] else "-")
        lines.append(f"| {VENDORS[db['vendor']]} | {' | '.join(cells)} |")
    return lines


def update_readme(results: dict[str, Any], readme: Path) -> None:
    """Refresh the headline block of the README, if it has one."""
    if not readme.exists():
        return
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    before, rest = text.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    block = [
        README_START,
        "`sequence` as a multiple of the hand-written chain, on the same worker class and "
        "database in one run; then `sequence` with inline steps as a multiple of Celery's "
        "chain, and `sequence` as a multiple of the peers on PostgreSQL ([bench/RESULTS.md]("
        "https://github.com/django-rq-sequence/django-rq-sequence/blob/main/bench/RESULTS.md"
        ") has the spreads, the targets and the machine):",
        "",
        *headline(results),
        README_END,
    ]
    readme.write_text(before + "\n".join(block) + after)


def write(results: dict[str, Any], path: Path) -> None:
    targets = Targets()
    body: list[str] = []
    for section in (
        throughput_section,
        peers_section,
        worker_section,
        latency_section,
        queries_section,
        scale_section,
        profile_section,
        admin_section,
        waiting_section,
        start_many_section,
        foreach_section,
        worker_stop_section,
        run_section,
    ):
        part = section(results, targets)
        if part:
            body += [*part, ""]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (which runs the command below); do not edit by hand. "
        "How it measures: [docs/performance.md](../docs/performance.md).",
        "",
        f"- Command: `{results['command']}` ({results['elapsed']:.0f} s), {when}",
        *(f"- Machine: {line}" for line in machine()),
        f"- Versions: {versions(results)}",
        f"- Repetitions: {results['plan']['reps']} per figure unless said otherwise",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {t} | {m} | {v} |" for t, m, v in targets.lines),
        "",
    ]
    path.write_text("\n".join(head + body).rstrip() + "\n")
    if path.resolve() == (Path(__file__).resolve().parent / "RESULTS.md"):
        update_readme(results, path.resolve().parent.parent / "README.md")


PARTS = (peers_section, waiting_section, start_many_section, foreach_section, worker_stop_section)
SEPARATELY = "- Measured separately:"


def splice(results: dict[str, Any], path: Path) -> None:
    """Write a partial run's sections and targets into the table at ``path``.

    Its sections replace the same sections (or go before "The run itself"), its target
    rows replace the same rows, and a line in the head says which command measured them
    and when; the rest of the file, from the full run, is left as it was.
    """
    targets = Targets()
    sections = [part for section in PARTS if (part := section(results, targets))]
    text = path.read_text() if path.exists() else ""
    if "## Targets" not in text:
        text = "\n".join(
            ["# Benchmark results", "", "## Targets", "", "| target | measured | verdict |",
             "|---|---|---|", ""]
        )  # fmt: skip
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = ", ".join(part[0].removeprefix("## ") for part in sections)
    note = f"{SEPARATELY} {names}: `{results['command']}` ({results['elapsed']:.0f} s), {when}"
    lines = [ln for ln in text.splitlines() if not (ln.startswith(SEPARATELY) and names in ln)]
    heads = [i for i, ln in enumerate(lines) if ln.startswith("## ")]
    lines.insert(heads[0] - 1 if heads[0] and not lines[heads[0] - 1] else heads[0], note)
    # The Targets table: our rows out, then in again at its end.
    mine = {target for target, _, _ in targets.lines}
    lines = [ln for ln in lines if not any(ln.startswith(f"| {t} |") for t in mine)]
    start = lines.index("## Targets")
    end = start + 1
    while end < len(lines) and (not lines[end].startswith("## ")):
        end += 1
    while not lines[end - 1].startswith("|"):
        end -= 1
    lines[end:end] = [f"| {t} | {m} | {v} |" for t, m, v in targets.lines]
    for part in sections:
        heads = [i for i, ln in enumerate(lines) if ln.startswith("## ")]
        if part[0] in lines:
            at = lines.index(part[0])
            after = [i for i in heads if i > at]
            stop = after[0] if after else len(lines)
            lines[at:stop] = [*part, ""]
        else:
            run = [i for i in heads if lines[i] == "## The run itself"]
            at = run[0] if run else len(lines)
            lines[at:at] = [*part, ""]
    path.write_text("\n".join(lines).rstrip() + "\n")
