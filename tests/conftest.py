"""Fixtures: a scratch Redis database, real worker processes, and helpers to wait on them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from django.db import connection

from sequence.engine.rq.dispatch import get_queue

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("TEST_OUTPUT", ROOT / "test-output"))


@pytest.fixture(autouse=True)
def redis_db() -> Iterator[object]:
    """An empty Redis database per test (the run's own server, see tests/redis_server.py)."""
    conn = django_rq.get_connection("default")
    db = conn.connection_pool.connection_kwargs.get("db", 0)
    if db == 0:
        pytest.exit("Refusing to flush Redis database 0; set TEST_REDIS_URL to a scratch one.", 2)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.connection_pool.disconnect()  # django_rq built this client and pool for us
    # A test that changed RQ_QUEUES must not leave its queues to the next one.
    get_queue.cache_clear()


class Workers:
    """Worker processes started by a test; every one is killed by pid at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = tmp_path

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["SEQUENCE_DB_NAME"] = str(connection.settings_dict["NAME"])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start(
        self,
        n: int = 1,
        *,
        kind: str = "simple",
        queues: tuple[str, ...] = ("default",),
        burst: bool = False,
        env: dict[str, str] | None = None,
    ) -> list[subprocess.Popen[bytes]]:
        command = ["sequence", "worker", *queues, "--worker-class", kind]
        if burst:
            command.append("--burst")
        return [self._spawn(command, env) for _ in range(n)]

    def rqworker(self, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """django-rq's ``manage.py rqworker`` with ``options`` (its queues and flags)."""
        return self._spawn(["rqworker", *options], env)

    def _spawn(self, command: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        """``manage.py`` with ``command``, in a session of its own, logged to worker-N.log."""
        with (self.logs / f"worker-{len(self.procs)}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "manage.py", *command], cwd=ROOT, env=self.env(env),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the worker's process group: the worker, its horse and its scheduler."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.kill(proc)
        for proc in self.procs:
            proc.wait(timeout=10)
        # RQ's forking worker puts each work-horse in a process group of its own: kill,
        # by pid, whatever is left in the workers' sessions.
        kill_sessions(self.procs)

    def output(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log"))
        )


def session_members(sid: int) -> list[int]:
    """Pids of every live process in session ``sid`` (read from /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields: state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != "Z":
            members.append(int(entry))
    return members


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    yield pool
    pool.stop_all()


def kill_sessions(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL, by pid, whatever is left in these processes' sessions (a work-horse, RQ's
    scheduler, one forked while the session was being killed), until none is left."""
    deadline = time.monotonic() + 10
    while left := [pid for p in procs for pid in session_members(p.pid)]:
        assert time.monotonic() < deadline, f"processes left after SIGKILL: {left}"
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def wait_exit(proc: subprocess.Popen[bytes], what: str, limit: float = 30) -> float:
    """Seconds until ``proc`` exits; the test fails if it still runs ``limit`` s later."""
    start = time.monotonic()
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: still running {limit}s later")
    return time.monotonic() - start


def wait_for(condition: Callable[[], object], timeout: float = 30, message: str = "") -> object:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(0.05)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tiers, from where it is and what it uses (pyproject.toml)."""
    for item in items:
        path = Path(str(item.path)).relative_to(ROOT).parts
        fixtures = getattr(item, "fixturenames", ())
        if item.get_closest_marker("django_db") is not None:
            item.add_marker(pytest.mark.db)
        if "workers" in fixtures or "rqworker" in fixtures:
            item.add_marker(pytest.mark.worker)
        if path[:2] == ("tests", "faults"):
            item.add_marker(pytest.mark.fault)
        if path[:2] == ("tests", "browser"):
            item.add_marker(pytest.mark.browser)


def pytest_report_header() -> str:
    db = settings.DATABASES["default"]
    return f"database: {db['ENGINE'].rsplit('.', 1)[-1]}; redis: {settings.RQ_QUEUES['default']['URL']}"
