"""Processes the benchmark starts: each in its own session, each killed by pid at the end.

Every pid is also appended to a file, so the top-level process can kill what a crashed
driver left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def pid_file() -> Path | None:
    path = os.environ.get("BENCH_PID_FILE")
    return Path(path) if path else None


def spawn(
    cmd: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in a new session, its output to ``log``; remember its pid."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    path = pid_file()
    if path is not None:
        with path.open("a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill ``proc``'s process group (a worker, its horse and its scheduler) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def kill_recorded(path: Path) -> None:
    """Kill every process group recorded in ``path`` that is still there."""
    if not path.exists():
        return
    for line in path.read_text().split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(line), signal.SIGKILL)


def python() -> str:
    return sys.executable


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its reaped children (a forking worker's horses)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), here offset by the 2 cut off
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def run_checked(cmd: Sequence[str], log: Path, timeout: float = 300) -> None:
    """Run a set-up command to its end (killed past ``timeout``); raise with its log if it fails."""
    proc = spawn(cmd, env=dict(os.environ), log=log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        kill(proc)
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{tail}")


def wait_at_gate(conn: Any, key: str, pool: Any, *, n: int, timeout: float, name: str = "") -> None:
    """Until ``n`` workers of ``pool`` (its ``procs`` and ``log_tail()``) are parked at the
    gate ``key``; an error with the workers' log if one exits or they take too long."""
    who = f"{name} workers" if name else "workers"
    deadline = time.monotonic() + timeout
    while conn.llen(f"{key}:in") < n:
        for proc in pool.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{who[:-1]} {proc.pid} exited:\n{pool.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{who} did not reach the gate:\n{pool.log_tail()}")
        time.sleep(0.02)
