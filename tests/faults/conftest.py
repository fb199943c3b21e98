"""Fixtures for the fault tests: a fleet of real workers, private Redis servers, the journal.

Every process a test starts is killed by pid at teardown: each worker runs in its own
session, and every member of that session (the worker, RQ's scheduler, and work-horses
that outlived a killed parent) is found in /proc and sent SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from sequence.ops import faults

from ..conftest import Workers, kill_sessions, session_members
from ..redis_server import binary, free_port, listening
from . import journal

# Worker settings for fault tests: fast beats, fast takeover, frequent sweeps.
FAULT_SETTINGS: dict[str, Any] = {
    "WORKER_HEARTBEAT": 0.25,
    "WORKER_DEAD_AFTER": 3,
    "RECOVER_INTERVAL": 0.5,
    "DISPATCH_GRACE": 1,
    "TIMEOUT": 20,
    "RETRY": {"max": 3, "interval": 0},
}


def env_for(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    import json

    merged = {**FAULT_SETTINGS, **(overrides or {})}
    return {f"SEQUENCE_{key}": json.dumps(value) for key, value in merged.items()}


class Fleet(Workers):
    """Worker processes for one fault test, with the fault settings in their environment."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        super().__init__(tmp_path)
        self.base_env = env
        self.kills = 0

    def start(self, n: int = 1, *, env: dict[str, str] | None = None, **options: Any) -> Any:
        return super().start(n, env={**self.base_env, **(env or {})}, **options)

    def kill_all_of(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal every process of the worker's session, by pid."""
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self.kills += 1

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def replace(self, proc: subprocess.Popen[bytes], **options: Any) -> subprocess.Popen[bytes]:
        """Kill ``proc``'s whole session and start a new worker in its place."""
        self.kill_all_of(proc)
        proc.wait(timeout=10)
        started: subprocess.Popen[bytes] = self.start(**options)[0]
        return started

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill_all_of(proc, signal.SIGCONT)
            self.kill_all_of(proc)
        for proc in self.procs:
            proc.wait(timeout=10)
        # A process forked while its session was being killed (RQ's scheduler, a
        # work-horse) escapes the first round: kill again until none is left.
        kill_sessions(self.procs)


@pytest.fixture(scope="session")
def journal_triggers(django_db_setup: Any, django_db_blocker: Any) -> None:
    with django_db_blocker.unblock():
        journal.install(connection)


@pytest.fixture(autouse=True)
def fault_settings(settings: Any, journal_triggers: None) -> Iterator[None]:
    """The fault settings in this process too (the test's own sweeps)."""
    for key, value in FAULT_SETTINGS.items():
        setattr(settings, f"SEQUENCE_{key}", value)
    get_queue.cache_clear()
    faults.disarm_all()
    yield
    faults.disarm_all()
    get_queue.cache_clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def fleet(tmp_path: Path, request: Any) -> Iterator[Fleet]:
    pool = Fleet(tmp_path, env_for())
    yield pool
    pool.stop_all()
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print("---- worker logs (last 4000 characters) ----")
        print(pool.output()[-4000:])


class RedisServer:
    """A redis-server of the test's own, on a free loopback port, killed by pid."""

    def __init__(self, workdir: Path, *, persistent: bool) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = binary()
        if server is None:
            pytest.fail("no redis-server binary (see tests/redis_server.py)")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else [
            "--appendonly", "no"
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), "--maxmemory-policy", "noeviction", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        if not listening(self.port):
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path, settings: Any) -> Iterator[Callable[..., RedisServer]]:
    """Start a private Redis and point this process's queues at it; workers get its URL."""
    servers: list[RedisServer] = []

    def make(*, persistent: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(servers)}", persistent=persistent)
        servers.append(server)
        server.start()
        settings.RQ_QUEUES = {
            name: {"URL": server.url, "SERIALIZER": "rq.serializers.JSONSerializer"}
            for name in ("default", "high")
        }
        get_queue.cache_clear()
        return server

    yield make
    get_queue.cache_clear()
    for server in servers:
        server.kill()


TERMINAL = {Status.COMPLETED, Status.FAILED, Status.CANCELED}


def statuses(seq_ids: Iterable[int]) -> dict[int, str]:
    return dict(SequenceRecord.objects.filter(pk__in=list(seq_ids)).values_list("id", "status"))


def settle(
    seq_ids: Iterable[int],
    *,
    timeout: float = 60,
    done: set[str] | None = None,
    sweep: bool = True,
) -> dict[int, str]:
    """Sweep (as an operator would) until every sequence is in ``done``; bounded in time."""
    ids = list(seq_ids)
    done = done or TERMINAL
    deadline = time.monotonic() + timeout
    while True:
        if sweep:
            faults.sweep(grace=1)
        now = statuses(ids)
        if all(status in done for status in now.values()):
            return now
        if time.monotonic() > deadline:
            stuck = [k for k, v in now.items() if v not in done]
            pytest.fail(f"{len(stuck)} sequences not settled after {timeout}s:\n{describe(stuck)}")
        time.sleep(0.3)


def pick(items: list[Any]) -> Any:
    return random.choice(items)


def describe(seq_ids: Iterable[int], limit: int = 5) -> str:
    """The rows and their RQ jobs, for a failure message."""
    from sequence.engine.rq.dispatch import job_id

    lines = []
    queue = get_queue("default")
    for record in SequenceRecord.objects.filter(pk__in=list(seq_ids))[:limit]:
        jid = job_id(record.pk, record.step_index, record.epoch)
        job = queue.connection.hgetall(queue.job_class.key_for(jid))
        fields = {
            k.decode(): v.decode(errors="replace")[:40]
            for k, v in job.items()
            if k.decode() in ("status", "worker_name", "origin", "enqueued_at")
        }
        position = queue.connection.lpos(queue.key, jid)
        lines.append(
            f"#{record.pk} {record.status} step {record.step_index} epoch {record.epoch} "
            f"due {record.dispatch_due} claim {record.claim_token} by {record.claimed_by!r} "
            f"lease {record.lease_until} updated {record.updated_at} recoveries "
            f"{record.recoveries}; job {jid}: {fields} at {position}"
        )
    return "\n".join(lines)
