"""Step timestamps, appended to one file that every worker process shares.

One ``write`` of a short line on a file opened with O_APPEND is atomic, costs a few
microseconds, and is the same for every contender, so it does not tilt the comparison.
"""

from __future__ import annotations

import os
import time
from typing import Any

_fd: tuple[int, int] | None = None  # (pid, fd): a forked horse opens its own


def _file() -> int:
    global _fd
    pid = os.getpid()
    if _fd is None or _fd[0] != pid:
        path = os.environ["BENCH_TIMING_FILE"]
        _fd = (pid, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    return _fd[1]


def work(data: dict[str, Any]) -> None:
    """The step body every contender runs: a small change to the data."""
    data["count"] = data.get("count", 0) + 1


def timed_work(data: dict[str, Any], chain: int | str, index: int) -> None:
    """Run the body, then record ``run chain index start end pid``."""
    started = time.time()
    work(data)
    ended = time.time()
    line = f"{data['run']} {chain} {index} {started:.6f} {ended:.6f} {os.getpid()}\n"
    os.write(_file(), line.encode())
