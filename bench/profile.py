"""Where a step's time goes: py-spy samples of one worker, sorted into the phases of a step.

Used by the driver when py-spy is installed (``pip install py-spy``). Samples include
idle ones (a thread waiting on a socket), so shares are of wall time; only the worker's
main thread counts. Each sample is put in the phase of its innermost recognised frame,
and marked as waiting on the database, waiting on Redis, or running Python by its leaf.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# (phase, substrings of a frame), innermost match wins; order breaks ties within a frame.
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("step body (user code)", ("timed_work (bench/app/timing.py",)),
    # The claim protocol's statements live in sequence/engine/claims.py (in runner.py before).
    ("claim", ("take (sequence/engine/claims.py", "_claim (sequence/runner.py")),
    (
        "commit (data, history, outbox)",
        (
            "commit (sequence/engine/claims.py",
            "commit_result (sequence/engine/claims.py",
            "_commit_running (sequence/engine/claims.py",
            "_commit_held (sequence/engine/claims.py",
            "record_attempt (sequence/engine/claims.py",
            "_commit (sequence/runner.py",
            "_attempt (sequence/runner.py",
        ),
    ),
    ("enqueue next step", ("dispatch (sequence/engine/rq/dispatch.py",)),
    ("signals and hooks", ("send (sequence/engine/hooks.py", "call (sequence/engine/hooks.py")),
    ("runner, other", ("run_step (sequence/runner.py",)),
    ("connection hygiene", ("close_old_connections",)),
    ("RQ: wait for a job", ("dequeue_any",)),
    ("RQ: job bookkeeping", ("BaseWorker.work", "SimpleWorker.execute_job", "perform_job")),
]
# A frame only the worker's main thread has.
MAIN = "BaseWorker.work ("
LEAVES = {
    "database": ("psycopg", "sqlite3/base.py", "django/db/backends"),
    "Redis": ("redis/", "socket.py"),
}


def _binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"  # installed into this environment
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return _binary() is not None


def record(pid: int, seconds: float, out: Path) -> Path:
    raw = out / f"profile-{pid}.txt"
    subprocess.run(
        [str(_binary()), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
         "--format", "raw", "--output", str(raw), "--nonblocking", "--idle"],
        check=True, capture_output=True,
    )  # fmt: skip
    return raw


def classify(raw: Path) -> dict[str, Any]:
    phases: Counter[str] = Counter()
    waits: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if not any(MAIN in frame for frame in frames):
            continue  # another thread: the scheduler's, liveness beats
        total += n
        phase = "other"
        for frame in reversed(frames):
            match = next((name for name, keys in PHASES if any(k in frame for k in keys)), None)
            if match:
                phase = match
                break
        leaf = frames[-1]
        kind = next((k for k, keys in LEAVES.items() if any(s in leaf for s in keys)), "Python")
        phases[phase] += n
        waits[(phase, kind)] += n
    return {
        "samples": total,
        "phases": dict(phases),
        "waits": {f"{p}|{k}": n for (p, k), n in waits.items()},
    }
