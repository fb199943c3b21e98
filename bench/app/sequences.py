"""(c) The same chains as ``sequence`` sequences."""

from __future__ import annotations

from bench.app.jobs import gate, park
from bench.app.timing import timed_work
from sequence import ForEach, Sequence, Sleep, Step


class Work(Step):
    def perform(self) -> None:
        timed_work(self.data, self.sequence.id, self.sequence.step_index)


class Five(Sequence):
    steps = [Work] * 5


class Fifty(Sequence):
    steps = [Work] * 50


class Long(Sequence):
    """For the scale test: many steps, so every sequence stays in flight."""

    steps = [Work] * 40


class Hold(Step):
    def perform(self) -> None:
        gate(self.data["key"])


class Gate(Sequence):
    steps = [Hold]


class Parked(Step):
    def perform(self) -> None:
        park(self.data["key"])


class Park(Sequence):
    """For the worker stop time: the one job on a ``--burst`` worker's queue, holding the
    worker until the bench releases it; its ``finished_at`` is when the queue emptied."""

    steps = [Parked]


def after_nap(data: dict[str, object]) -> None:
    """The step after the sleep: its history row's start is when the sequence woke."""


class Nap(Sequence):
    """For the wake-up lateness: sleep 5 s, then one step."""

    steps = [Sleep(seconds=5), after_nap]


def first(data: dict[str, object]) -> None:
    """Never run: start_many's bench queues it without a worker."""


class Started(Sequence):
    """For start_many against start: what starting costs, nothing run."""

    steps = [first]


class Element(Step):
    """A ForEach's element: the same no-op body, timed under the element's position."""

    def perform(self) -> None:
        timed_work(self.data, self.sequence.id, self.index or 0)


class Fan(Sequence):
    """For the ForEach bench: one no-op element per entry of data["items"], 20 at once."""

    steps = [ForEach("items", Element, concurrency=20, into="results")]
