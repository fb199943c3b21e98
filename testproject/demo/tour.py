"""The demo's tour after the bar: one sequence per thing a reader should see happen.

Each scenario starts a sequence on the demo's real workers, steers it as a user would
(pause, resume, send an event, SIGKILL a worker by pid) and prints a line as each thing
happens, read from the database.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from django.core.management.base import CommandError, OutputWrapper
from rq import Worker

from sequence import Sequence
from sequence.engine.rq.dispatch import job_id
from sequence.engine.states import Outcome, Status
from sequence.models import StepAttempt
from testproject.demo.sequences import Checkout, Expense, Import, Onboarding, Shipment


class Pool(Protocol):
    """What the tour needs of the demo's workers."""

    @property
    def pids(self) -> list[int]: ...

    def check_alive(self) -> None: ...

    def kill(self, pid: int) -> None: ...


class Tour:
    def __init__(self, out: OutputWrapper, pool: Pool, conn: Any, timeout: float = 20) -> None:
        self.out = out
        self.pool = pool
        self.conn = conn
        self.timeout = timeout
        self.began = time.monotonic()

    def say(self, what: str, text: str) -> None:
        self.out.write(f"  {time.monotonic() - self.began:5.1f}s  {what:<8} {text}")
        self.out.flush()

    def until(self, seq: Sequence[Any], done: Callable[[Sequence[Any]], bool], what: str) -> None:
        """Refresh ``seq`` until ``done(seq)``; CommandError after the tour's timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            seq.refresh()
            if done(seq):
                return
            self.pool.check_alive()
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{seq.name} #{seq.id} is {seq.status} at {seq.current_step!r}, still not "
                    f"{what} after {self.timeout:.0f}s."
                )
            time.sleep(0.05)

    def run(self) -> None:
        for scenario in (self.failure, self.pause, self.sleep, self.event, self.killed_worker):
            scenario()

    def failure(self) -> None:
        seq = Checkout.start({"order": 7})
        self.say("fail", f"{seq.name} #{seq.id}: ChargeCard raises Fail('card declined')")
        self.until(seq, lambda s: s.status in (Status.COMPENSATING, Status.FAILED), "failing")
        if seq.status == Status.COMPENSATING:
            self.say("", "compensating: ReserveStock.compensate() runs as a job of its own")
        self.until(seq, lambda s: s.status == Status.FAILED, "failed")
        undone = StepAttempt.objects.filter(sequence_id=seq.id, outcome=Outcome.COMPENSATED)
        names = ", ".join(undone.values_list("step", flat=True)) or "nothing"
        self.say("", f"failed for good, no retry; compensated: {names}; error: {seq.error!r}")

    def pause(self) -> None:
        seq = Shipment.start({"order": 8})
        self.until(seq, lambda s: s.status == Status.RUNNING, "running")
        seq.pause()
        self.say("pause", f"{seq.name} #{seq.id}: paused while Pack runs (status {seq.status})")
        self.until(seq, lambda s: s.step_index == 1, "past Pack")
        time.sleep(0.5)
        seq.refresh()
        self.say("", f"Pack finished and was kept; still {seq.status} at {seq.progress} steps")
        seq.resume()
        self.say("resume", f"{seq.name} #{seq.id}: resumed from {seq.current_step}")
        self.until(seq, lambda s: s.status == Status.COMPLETED, "completed")
        self.say("", f"completed: label {seq.data['label']!r}, shipped {seq.data['shipped']}")

    def sleep(self) -> None:
        seq = Onboarding.start({"user": "ada"})
        self.until(seq, lambda s: s.status == Status.SLEEPING, "sleeping")
        wake_at = seq._record.wake_at
        assert wake_at is not None
        self.say("sleep", f"{seq.name} #{seq.id}: sleeping until {wake_at:%H:%M:%S} (3 s)")
        slept = time.monotonic()
        self.until(seq, lambda s: s.status == Status.COMPLETED, "completed")
        self.say("", f"woke after {time.monotonic() - slept:.1f}s and completed: tips sent")

    def event(self) -> None:
        seq = Expense.start({"amount": 120})
        self.until(seq, lambda s: s.status == Status.WAITING, "waiting")
        self.say("wait", f"{seq.name} #{seq.id}: waiting for 'approved'")
        seq.send("approved", {"approved_by": "grace"}, id="evt-1")
        self.say("", "sent 'approved' {'approved_by': 'grace'}")
        self.until(seq, lambda s: s.status == Status.COMPLETED, "completed")
        self.say("", f"completed: paid {seq.data['paid']}, approved by {seq.data['approved_by']}")

    def killed_worker(self) -> None:
        seq = Import.start({"source": "crm"})
        self.until(seq, lambda s: s.status == Status.RUNNING, "running")
        pid = self.worker_running(job_id(seq.id, 0, seq._record.epoch))
        self.pool.kill(pid)
        killed = time.monotonic()
        self.say(
            "kill", f"{seq.name} #{seq.id}: SIGKILL to worker pid {pid} in the middle of Fetch"
        )
        self.until(seq, lambda s: s._record.recoveries > 0, "recovered")
        self.say(
            "",
            f"the sweep saw the worker stop beating and queued Fetch again "
            f"({time.monotonic() - killed:.1f}s after the kill)",
        )
        self.until(seq, lambda s: s.status == Status.COMPLETED, "completed")
        lost = StepAttempt.objects.filter(sequence_id=seq.id, outcome=Outcome.LOST).count()
        self.say(
            "", f"completed on the other worker: {seq.data['loaded']} rows; {lost} attempt lost"
        )

    def worker_running(self, job: str) -> int:
        """The pid of the demo's worker running ``job`` (RQ's record of its workers)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for worker in Worker.all(connection=self.conn):
                if worker.get_current_job_id() == job and worker.pid in self.pool.pids:
                    return int(worker.pid)
            time.sleep(0.02)
        raise CommandError(f"No demo worker picked up {job} within {self.timeout:.0f}s.")
