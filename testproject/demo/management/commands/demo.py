"""``manage.py demo``: many ContactFormSequence runs on real workers, with a progress bar.

Starts worker processes (``manage.py sequence worker``), starts the sequences, shows
their progress until every one has finished, prints a summary table, then takes the
tour (``testproject.demo.tour``: a failure that compensates, pause and resume, a sleep,
an event, a worker killed mid-step and recovered), and stops every process it started,
by process group, also on Ctrl-C or an error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import django_rq
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db.models import Count
from rq import Worker

from sequence.engine.states import TERMINAL, Outcome, Status
from sequence.models import SequenceRecord, StepAttempt
from testproject.demo.sequences import ContactFormSequence
from testproject.demo.tour import Tour

# The demo's workers beat often and are given up for dead soon, and sweep every second,
# so that the worker the tour kills is noticed within seconds (defaults: 5, 30, 60).
FAST_RECOVERY = {
    "SEQUENCE_WORKER_HEARTBEAT": "0.5",
    "SEQUENCE_WORKER_DEAD_AFTER": "3",
    "SEQUENCE_RECOVER_INTERVAL": "1",
}

NAMES = ["Ada", "Grace", "Joel", "Linus", "Margaret", "Guido", "Barbara", "Ken", "Frances"]


class WorkerPool:
    """Worker processes, each the leader of its own process group (its RQ scheduler too)."""

    def __init__(self, logs: Path, queue: str) -> None:
        self.logs = logs
        self.queue = queue
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs if proc.pid not in self.killed]

    def kill(self, pid: int) -> None:
        """SIGKILL one worker process (not its group: its scheduler goes at stop())."""
        if pid not in self.pids:
            raise CommandError(f"{pid} is not one of the demo's live workers.")
        self.killed.add(pid)
        os.kill(pid, signal.SIGKILL)

    def start(self, n: int) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        manage = Path(settings.BASE_DIR) / "manage.py"
        for index in range(n):
            with self.log(index).open("wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(manage), "sequence", "worker", self.queue],
                        cwd=settings.BASE_DIR,
                        env={**os.environ, **FAST_RECOVERY, "PYTHONUNBUFFERED": "1"},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        # Ctrl-C in the terminal reaches only this command, which then
                        # stops the workers in order; and killpg reaches the scheduler.
                        start_new_session=True,
                    )
                )

    def log(self, index: int) -> Path:
        return self.logs / f"demo-worker-{index}.log"

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc.pid not in self.killed and proc.poll() is not None:
                raise CommandError(
                    f"Worker {index} (pid {proc.pid}) exited with status {proc.returncode}; "
                    f"its log ends:\n{self.tail(index)}"
                )

    def tail(self, index: int, lines: int = 15) -> str:
        try:
            text = self.log(index).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, grace: float = 5) -> None:
        """SIGTERM each group (RQ's warm shutdown), then SIGKILL whatever is left."""
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            _killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # The group outlives its leader while the scheduler still runs.
            while _group_alive(proc.pid) and time.monotonic() < deadline + 5:
                _killpg(proc.pid, signal.SIGKILL)
                time.sleep(0.05)
        self.procs.clear()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass(frozen=True)
class Snapshot:
    """How far the demo's sequences got, read from the database."""

    statuses: Counter[str]
    steps: int
    elapsed: float

    @property
    def finished(self) -> int:
        return sum(self.statuses[s] for s in TERMINAL)


class ProgressView:
    """A bar redrawn in place on a terminal; a plain line per change otherwise."""

    WIDTH = 30

    def __init__(
        self, out: OutputWrapper, sequences: int, steps: int, tty: bool, color: bool
    ) -> None:
        self.out = out
        self.sequences = sequences
        self.steps = steps
        self.tty = tty
        self.color = color
        self.last_line = ""
        self.last_print = 0.0

    def paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def update(self, snap: Snapshot, final: bool = False) -> None:
        s = snap.statuses
        counts = (
            f"{snap.finished:>{len(str(self.sequences))}}/{self.sequences} sequences  "
            f"{snap.steps:>{len(str(self.steps))}}/{self.steps} steps  "
            f"{s[Status.RETRYING]} retrying  {s[Status.FAILED]} failed  {snap.elapsed:5.1f}s"
        )
        if self.tty:
            done = self.WIDTH * snap.steps // max(self.steps, 1)
            bar = self.paint("32", "█" * done) + self.paint("2", "░" * (self.WIDTH - done))
            percent = 100 * snap.steps // max(self.steps, 1)
            self.out.write(f"\r\x1b[K  {bar} {percent:3}%  {counts}", ending="\n" if final else "")
            self.out.flush()
            return
        # Not a terminal (a log, CI): a line when something changed, at most twice a second.
        line = f"progress: {counts}"
        now = time.monotonic()
        changed = line.split("  ")[:-1] != self.last_line.split("  ")[:-1]
        if final or (changed and now - self.last_print >= 0.5):
            self.out.write(line)
            self.out.flush()
            self.last_line, self.last_print = line, now


def table(rows: list[tuple[str, str]]) -> str:
    """A two-column text table, the values right-aligned."""
    left = max(len(k) for k, _ in rows)
    right = max(len(v) for _, v in rows)
    rule = f"+-{'-' * left}-+-{'-' * right}-+"
    body = [f"| {k:<{left}} | {v:>{right}} |" for k, v in rows]
    return "\n".join([rule, body[0], rule, *body[1:], rule])


class Command(BaseCommand):
    help = "Run many ContactFormSequence sequences on real worker processes, with live progress."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=100, help="Sequences to start (100).")
        parser.add_argument("--workers", type=int, default=2, help="Worker processes (2).")
        parser.add_argument(
            "--flaky-every", type=int, default=10,
            help="Every N-th sequence fails its AssignMessage once, and RQ retries it (10).",
        )  # fmt: skip
        parser.add_argument(
            "--timeout", type=float, default=60, help="Seconds to wait for every sequence (60)."
        )
        parser.add_argument(
            "--flush", action="store_true",
            help="Empty the queues' Redis database first (refused for database 0).",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        previous = signal.signal(signal.SIGTERM, _terminate)
        pool = WorkerPool(Path(settings.BASE_DIR) / "var", ContactFormSequence.queue or "default")
        try:
            self.run(pool, **options)
        except KeyboardInterrupt:
            self.stdout.write("")
            raise CommandError("Interrupted; the workers were stopped.", returncode=130) from None
        finally:
            pool.stop()
            signal.signal(signal.SIGTERM, previous)

    def run(
        self,
        pool: WorkerPool,
        *,
        count: int,
        workers: int,
        flaky_every: int,
        timeout: float,
        flush: bool,
        **_: Any,
    ) -> None:
        conn = django_rq.get_connection(pool.queue)
        db = conn.connection_pool.connection_kwargs.get("db", 0)
        if flush:
            if db == 0:
                raise CommandError(
                    "Refusing to flush Redis database 0; point REDIS_URL at a scratch database "
                    "(make demo uses database 1)."
                )
            conn.flushdb()
        tty = self.stdout.isatty()
        color = tty and not os.environ.get("NO_COLOR")
        head = f"Starting {workers} workers and {count} {ContactFormSequence.name} sequences"
        self.stdout.write(self.style.MIGRATE_HEADING(head) if color else head)

        pool.start(workers)
        self.wait_for_workers(pool, conn, workers)

        started = time.monotonic()
        ids = [
            ContactFormSequence.start(
                {
                    "name": f"{NAMES[i % len(NAMES)]} {i}",
                    "github": f"contact{i}",
                    **({"flaky": True} if flaky_every and i % flaky_every == 0 else {}),
                }
            ).id
            for i in range(count)
        ]
        total_steps = count * len(ContactFormSequence.plan_names())
        view = ProgressView(self.stdout, count, total_steps, tty, color)
        while True:
            snap = self.snapshot(ids, started)
            if snap.finished == count:
                break
            view.update(snap)
            pool.check_alive()
            if snap.elapsed > timeout:
                view.update(snap, final=True)
                raise CommandError(
                    f"{count - snap.finished} sequences still running after {timeout:.0f}s; "
                    f"worker logs are in {pool.logs}."
                )
            time.sleep(0.1)
        view.update(snap, final=True)
        self.summary(ids, snap)
        if snap.statuses[Status.FAILED]:
            raise CommandError(f"{snap.statuses[Status.FAILED]} sequences failed.")
        self.stdout.write("")
        head = "The tour: a failure, a pause, a sleep, an event, a killed worker"
        self.stdout.write(self.style.MIGRATE_HEADING(head) if color else head)
        Tour(self.stdout, pool, conn).run()
        self.stdout.write("")
        self.stdout.write(
            "Every sequence above, with its history, is in the admin on the demo database:\n"
            "  make admin    (a superuser and its password are printed, then the URL)"
        )

    def wait_for_workers(self, pool: WorkerPool, conn: Any, n: int) -> None:
        deadline = time.monotonic() + 30
        while Worker.count(connection=conn) < n:
            pool.check_alive()
            if time.monotonic() > deadline:
                raise CommandError(f"The workers did not register within 30s:\n{pool.tail(0)}")
            time.sleep(0.05)

    def snapshot(self, ids: list[int], started: float) -> Snapshot:
        # Statuses first: a step's attempt commits with its status change, so counting
        # the attempts afterwards never shows a completed sequence short of steps.
        statuses = Counter(
            dict(
                SequenceRecord.objects.filter(id__in=ids)
                .values_list("status")
                .annotate(n=Count("id"))
                .order_by()
            )
        )
        steps = StepAttempt.objects.filter(sequence_id__in=ids, outcome=Outcome.SUCCEEDED).count()
        return Snapshot(statuses, steps, time.monotonic() - started)

    def summary(self, ids: list[int], snap: Snapshot) -> None:
        retried = (
            StepAttempt.objects.filter(sequence_id__in=ids, outcome=Outcome.FAILED)
            .values("sequence_id")
            .distinct()
            .count()
        )
        rows = [
            ("", "count"),
            ("sequences", str(len(ids))),
            ("completed", str(snap.statuses[Status.COMPLETED])),
            ("failed", str(snap.statuses[Status.FAILED])),
            ("retried", str(retried)),
            ("steps", str(snap.steps)),
            ("elapsed", f"{snap.elapsed:.2f} s"),
            ("steps/s", f"{snap.steps / snap.elapsed:.1f}"),
        ]
        self.stdout.write("")
        self.stdout.write(table(rows))


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (make or CI stopping us) takes the same way out as Ctrl-C.
    raise KeyboardInterrupt
