"""Sequences the fault tests run (tests/faults): each step leaves evidence of what ran.

- ``Work`` steps record every start of their body in ``BodyRun`` (at least once),
- ``AtomicWork`` writes an ``Effect`` row inside its commit (exactly once),
- ``Pay`` charges an idempotency ledger keyed by ``self.idempotency_key`` (exactly once),

and ``data["sleep"]`` (seconds, or ``[low, high]``) slows every step so that faults land
mid-step.
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

from rq.timeouts import JobTimeoutException

from sequence import Concurrency, Retry, Sequence, Step
from sequence.declare.exceptions import StepFenced
from testproject.testapp.models import BodyRun, Effect, Payment


def started(step: Step, note: str = "") -> None:
    record = step.sequence.record
    BodyRun.objects.create(
        seq_id=record.pk, step=type(step).__name__, step_index=record.step_index,
        epoch=record.epoch, attempt=step.attempt, pid=os.getpid(), note=note,
    )  # fmt: skip


def nap(data: dict[str, Any]) -> None:
    sleep = data.get("sleep", 0)
    if isinstance(sleep, list):
        sleep = random.uniform(float(sleep[0]), float(sleep[1]))
    if sleep:
        time.sleep(float(sleep))


class Work(Step):
    retry = Retry(max=3, interval=0)

    def perform(self) -> None:
        started(self)
        nap(self.data)
        self.data.setdefault("trail", []).append(type(self).__name__)


class AtomicWork(Step):
    atomic = True
    retry = Retry(max=3, interval=0)

    def perform(self) -> None:
        nap(self.data)
        Effect.objects.create(seq_id=self.sequence.id, step=type(self).__name__)
        self.data.setdefault("trail", []).append(type(self).__name__)


class Pay(Step):
    retry = Retry(max=3, interval=0)

    def perform(self) -> None:
        started(self)
        nap(self.data)
        Payment.objects.get_or_create(
            key=self.idempotency_key, defaults={"seq_id": self.sequence.id, "step": "Pay"}
        )
        self.data.setdefault("trail", []).append(type(self).__name__)


class Finish(Work):
    pass


class FaultChain(Sequence):
    """Four steps: plain, atomic, idempotent payment, plain."""

    steps = [Work, AtomicWork, Pay, Finish]


class FlowChain(Sequence):
    """FaultChain's steps, at most two at once per ``data["account"]``."""

    steps = FaultChain.steps
    concurrency = Concurrency("account", limit=2)


def _patient(step: type[Step]) -> type[Step]:
    """The same step (same name) with more retries than a fault test can take away."""
    return type(
        step.__name__, (step,), {"retry": Retry(max=30, interval=0), "__module__": __name__}
    )


class OutageChain(Sequence):
    """FaultChain's steps, with retries that outlast fault 10's rounds of terminations.

    Every round fails at most one attempt of each running step, so with more retries
    than rounds the only correct end is completed, whatever the timing.
    """

    steps = [_patient(step) for step in FaultChain.steps]


class Poison(Step):
    """Kills the process that runs it, every time."""

    retry = Retry(max=3, interval=0)

    def perform(self) -> None:
        started(self)
        os.kill(os.getpid(), signal.SIGKILL)


class PoisonChain(Sequence):
    steps = [Work, Poison, Finish]


class Beating(Step):
    """Runs for data["beats"] x 0.2 s, calling heartbeat() after each, and notes a fence."""

    timeout = 30
    retry = Retry(max=3, interval=0)

    def perform(self) -> None:
        started(self)
        for _ in range(int(self.data.get("beats", 10))):
            time.sleep(0.2)
            try:
                self.heartbeat()
            except StepFenced:
                started(self, note="fenced")
                raise
        self.data.setdefault("trail", []).append("Beating")


class BeatingChain(Sequence):
    steps = [Work, Beating, Finish]


class Overrun(Step):
    """Sleeps past its one-second timeout on data["overrun_attempts"] first attempts."""

    timeout = 1
    retry = Retry(max=2, interval=0)

    def perform(self) -> None:
        started(self)
        if self.attempt <= int(self.data.get("overrun_attempts", 1)):
            time.sleep(3)
        self.data["overrun_done"] = self.attempt


class OverrunChain(Sequence):
    steps = [Overrun, Finish]


class Swallow(Step):
    """Catches RQ's timeout on its first attempt and carries on as if nothing happened."""

    timeout = 1
    retry = Retry(max=2, interval=0)

    def perform(self) -> None:
        started(self)
        if self.attempt == 1:
            try:
                time.sleep(3)
            except JobTimeoutException:
                self.data["swallowed"] = True
            started(self, note="after-swallow")


class SwallowChain(Sequence):
    steps = [Swallow, Finish]


class FailsUntilFixed(Step):
    """Fails for good (no retries) until data["fixed"] or a Payment row named "fix" exists."""

    retry = Retry(max=0)

    def perform(self) -> None:
        started(self)
        fixed = Payment.objects.filter(key=f"fix:{self.sequence.id}").exists()
        if not (self.data.get("fixed") or fixed):
            raise RuntimeError("not fixed yet")


class FixableChain(Sequence):
    steps = [Work, FailsUntilFixed, Finish]
