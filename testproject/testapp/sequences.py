"""Sequences the test suite runs on real workers."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from sequence import Fail, Retry, Sequence, Step
from testproject.testapp.models import Ledger


def mark(step: Step | None, name: str, sequence_id: int, key: str = "") -> None:
    Ledger.objects.create(sequence_id=sequence_id, step=name, idempotency_key=key)


class Record(Step):
    """Appends its name to data["trail"] and writes a ledger row."""

    def perform(self) -> None:
        name = type(self).__name__
        mark(self, name, self.sequence.id, self.idempotency_key)
        self.data.setdefault("trail", []).append(name)
        time.sleep(float(self.data.get("sleep", 0)))


class A(Record):
    pass


class B(Record):
    pass


class C(Record):
    pass


class ThreeSteps(Sequence):
    steps = [A, B, C]


class Double(Step):
    def perform(self) -> dict[str, Any]:
        return {"doubled": self.data["n"] * 2}


def add_one(data: dict[str, Any]) -> dict[str, Any]:
    return {"plus_one": data["doubled"] + 1}


def remember(data: dict[str, Any]) -> None:
    data["seen"] = [data["doubled"], data["plus_one"]]


class Arithmetic(Sequence):
    steps = [Double, add_one, remember]


class Inner(Sequence):
    steps = [B, C]


class WithSubSequence(Sequence):
    steps = [A, Inner]


class Flaky(Step):
    """Fails its first data["fail_times"] attempts."""

    retry = Retry(max=2, interval=0)

    def perform(self) -> None:
        mark(self, "Flaky", self.sequence.id, self.idempotency_key)
        self.data["attempts_seen"] = self.attempt
        if self.attempt <= int(self.data.get("fail_times", 0)):
            self.data["poisoned"] = True  # must not survive the failed attempt
            raise RuntimeError(f"flaky failure {self.attempt}")


class FlakySequence(Sequence):
    steps = [A, Flaky, C]


class Undo(Record):
    def compensate(self) -> None:
        mark(self, "Undo.compensate", self.sequence.id)


class Broken(Step):
    retry = Retry(max=1, interval=0)

    def perform(self) -> None:
        mark(self, "Broken", self.sequence.id)
        repaired = Ledger.objects.filter(sequence_id=self.sequence.id, step="repair").exists()
        if not (self.data.get("fixed") or repaired):
            raise ValueError("broken step")


class Compensating(Sequence):
    steps = [Undo, Broken, C]

    def on_failure(self, error: str) -> None:
        mark(None, "on_failure", self.id)

    def on_complete(self) -> None:
        mark(None, "on_complete", self.id)


class BadOutput(Step):
    retry = Retry(max=0)

    def perform(self) -> None:
        self.data["when"] = datetime(2026, 1, 1)


class BadOutputSequence(Sequence):
    steps = [BadOutput]


class AtomicWrite(Step):
    atomic = True

    def perform(self) -> None:
        mark(self, "AtomicWrite", self.sequence.id, self.idempotency_key)


class AtomicSequence(Sequence):
    steps = [AtomicWrite, B]


class Versioned(Sequence):
    steps = [A, B]
    version = "2"


class SlowStep(Record):
    """A step that takes data["sleep"] seconds."""


class Slow(Sequence):
    steps = [SlowStep, B]


def clean_signup(data: dict[str, Any]) -> dict[str, Any]:
    if "@" not in str(data.get("email", "")):
        raise ValueError(f"email {data.get('email')!r} is not an address")
    return {"email": data["email"].lower()}


class Signup(Sequence):
    steps = [A]
    schema = clean_signup


try:
    import pydantic
except ImportError:  # pragma: no cover - pydantic is an optional extra
    pydantic = None  # type: ignore[assignment]

if pydantic is not None:

    class Order(pydantic.BaseModel):
        order_id: int
        amount: float = 0.0

    class Checkout(Sequence):
        steps = [A]
        schema = Order


class Nap(Step):
    """Sleeps data["nap"] seconds, within a one-second timeout."""

    timeout = 1

    def perform(self) -> None:
        time.sleep(float(self.data["nap"]))


class Napping(Sequence):
    steps = [Nap, Nap]


class OnHigh(Step):
    queue = "high"

    def perform(self) -> None:
        self.data.setdefault("trail", []).append("OnHigh")


class Hop(Step):
    def perform(self) -> None:
        self.data.setdefault("trail", []).append("Hop")


class QueueHopping(Sequence):
    """Its first step on the "high" queue, the others on the sequence's queue."""

    steps = [OnHigh, Hop, Hop]


# -- failure and compensation (tests/test_compensation.py, tests/faults/test_compensation.py)

from testproject.testapp.saga import PlaceOrder  # noqa: E402, F401  (registers it)


class Undoable(Record):
    """Records its run; its compensation writes "<name>.undo" with the data it sees."""

    def compensate(self) -> None:
        name = type(self).__name__
        mark(self, f"{name}.undo", self.sequence.id)
        Ledger.objects.create(
            sequence_id=self.sequence.id,
            step=f"{name}.saw",
            idempotency_key=",".join(sorted(self.data)),
        )
        time.sleep(float(self.data.get("undo_sleep", 0)))


class First(Undoable):
    pass


class Second(Undoable):
    pass


class NoUndo(Record):
    pass


class HalfDone(Step):
    """Sets data["half_done"], then fails for good (no retries)."""

    retry = Retry(max=0)

    def perform(self) -> None:
        self.data["half_done"] = True
        mark(self, "HalfDone", self.sequence.id)
        raise RuntimeError("half way")


class Saga(Sequence):
    """First, NoUndo, Second complete; HalfDone fails: Second then First are undone."""

    steps = [First, NoUndo, Second, HalfDone]

    def on_failure(self, error: str) -> None:
        Ledger.objects.create(
            sequence_id=self.id, step="on_failure", idempotency_key=",".join(sorted(self.data))
        )


class FailingUndo(Record):
    retry = Retry(max=1, interval=0)

    def compensate(self) -> None:
        mark(self, "FailingUndo.undo", self.sequence.id)
        raise RuntimeError("cannot undo")


class SagaWithFailingUndo(Sequence):
    steps = [First, FailingUndo, HalfDone]


class Inner2(Sequence):
    steps = [Second]


class SagaOfSubSequence(Sequence):
    steps = [First, Inner2, HalfDone]


class WaitsForCancel(Step):
    """Waits (heartbeating) until data says stop or the step is fenced."""

    def perform(self) -> None:
        for _ in range(200):
            self.heartbeat()
            time.sleep(0.05)


class Cancelable(Sequence):
    steps = [First, Second, WaitsForCancel]


class Pick(Step):
    """A step used twice with different values (Step.using)."""

    def perform(self) -> None:
        self.data.setdefault("picked", []).append(self.data["team"])


class Routing(Sequence):
    steps = [Pick.using(team="support"), Pick.using(team="billing"), Inner2.using(team="x")]


class NotRetriedError(Exception):
    pass


class RetriesOnlyTimeouts(Step):
    retry = Retry(max=3, interval=0, on=(TimeoutError,))

    def perform(self) -> None:
        mark(self, "RetriesOnlyTimeouts", self.sequence.id)
        raise NotRetriedError("not a timeout")


class OnlyTimeouts(Sequence):
    steps = [RetriesOnlyTimeouts]


class BacksOff(Step):
    retry = Retry(max=2, interval=1, backoff=3.0)

    def perform(self) -> None:
        mark(self, "BacksOff", self.sequence.id)
        raise TimeoutError("still down")


class BackingOff(Sequence):
    steps = [BacksOff]


# -- waiting (tests/test_waiting.py, tests/faults/test_waiting.py) ---------------------------

from sequence import Sleep, WaitFor  # noqa: E402
from testproject.testapp.onboarding import Onboarding  # noqa: E402, F401  (registers it)


def wake_time(data: dict[str, Any]) -> str:
    return str(data["wake_at"])


class Snooze(Sequence):
    steps = [A, Sleep(seconds=1), B]


class SnoozeUntil(Sequence):
    steps = [A, Sleep(until=wake_time), B]


class Approval(Sequence):
    steps = [A, WaitFor("approved"), B]


class ApprovalOrUndo(Sequence):
    steps = [First, WaitFor("approved", timeout=1), B]


class ApprovalOrOnward(Sequence):
    steps = [A, WaitFor("approved", timeout=1, on_timeout="continue"), B]


class SleepsLast(Sequence):
    steps = [A, Sleep(seconds=0.5)]


# -- fan-out (tests/test_fanout.py, tests/faults/test_fanout.py) ------------------------------

from sequence import ForEach  # noqa: E402
from testproject.testapp.campaign import Campaign  # noqa: E402, F401  (registers it)


class Square(Step):
    """Records its element's run and returns its square; data["slow"] slows it."""

    def perform(self) -> dict[str, Any]:
        Ledger.objects.create(
            sequence_id=self.sequence.id,
            step=f"square {self.index}",
            idempotency_key=self.idempotency_key,
        )
        time.sleep(float(self.data.get("slow", 0)))
        self.data["leaked"] = True  # an element's changes to the data are not saved
        return {"n": self.item * self.item}

    def compensate(self) -> None:
        Ledger.objects.create(sequence_id=self.sequence.id, step=f"unsquare {self.index}")


class Squares(Sequence):
    steps = [A, ForEach("numbers", Square, into="squares"), B]


class SquaresAtOnce(Sequence):
    steps = [ForEach("numbers", Square, concurrency=4, into="squares")]


class FlakySquare(Square):
    retry = Retry(max=2, interval=0)

    def perform(self) -> dict[str, Any]:
        if self.item == 3 and self.attempt == 1:
            raise TimeoutError("once")
        return super().perform()


class FlakySquares(Sequence):
    steps = [ForEach("numbers", FlakySquare, concurrency=2, into="squares")]


class BadSquare(Square):
    retry = Retry(max=0)

    def perform(self) -> dict[str, Any]:
        if self.item == 13:
            raise Fail("unlucky")
        return super().perform()


class UnluckySquares(Sequence):
    steps = [First, ForEach("numbers", BadSquare, into="squares"), B]


def double(item: Any, data: dict[str, Any]) -> Any:
    return item * 2


class Doubles(Sequence):
    steps = [ForEach("numbers", double, concurrency=3, into="doubled")]


# -- a completion is a completion (tests/test_completion.py) ------------------------------------

from sequence import signals  # noqa: E402


class HeldSquare(Square):
    """A Square that, given data["hold"], waits at its start until PATH.release exists."""

    def perform(self) -> dict[str, Any]:
        hold = self.data.get("hold")
        if hold:
            from pathlib import Path

            Path(f"{hold}.reached").touch()
            deadline = time.monotonic() + 60
            while not Path(f"{hold}.release").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().perform()


class _MarksItsEnd(Sequence):
    def on_complete(self) -> None:
        mark(None, "on_complete", self.id)


class EndsOnStep(_MarksItsEnd):
    steps = [A, B]


class EndsOnForEach(_MarksItsEnd):
    steps = [A, ForEach("numbers", HeldSquare)]


class EndsOnSleep(_MarksItsEnd):
    steps = [A, Sleep(seconds=0.2)]


class EndsOnWait(_MarksItsEnd):
    steps = [A, WaitFor("go")]


def _completed(sender: Any, sequence: Any, **kwargs: Any) -> None:
    mark(None, "sequence_completed", sequence.id)


for _cls in (EndsOnStep, EndsOnForEach, EndsOnSleep, EndsOnWait):
    signals.sequence_completed.connect(_completed, sender=_cls, weak=False)


from testproject.testapp.flow import OnePerAccount  # noqa: E402, F401  (registers it)
