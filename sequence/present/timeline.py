"""The admin's timeline: one bar per attempt along a time axis, laid out for CSS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from sequence.declare.masking import mask_text
from sequence.engine.states import Outcome
from sequence.models import SequenceRecord, StepAttempt
from sequence.present import display
from sequence.present.display import format_duration

# Narrowest bar, in percent of the axis: an attempt of a millisecond stays visible.
MIN_WIDTH = 0.6
TICKS = 5


@dataclass(frozen=True)
class Bar:
    """One attempt: where its bar starts and how wide it is, in percent of the axis."""

    label: str
    outcome: str
    outcome_label: str
    left: float
    width: float
    took: str
    title: str
    # What happened just before this attempt that the attempts alone do not say.
    mark: str = ""

    @property
    def style(self) -> str:
        # Numbers computed here, never user input: safe inside a style attribute.
        return f"left: {self.left:.2f}%; width: {self.width:.2f}%"

    @property
    def took_inside(self) -> bool:
        return self.width >= 12

    @property
    def took_style(self) -> str:
        """Place the duration label: inside a wide bar, else after it (before it near the end)."""
        end = self.left + self.width
        if self.took_inside:
            return f"right: calc({100 - end:.2f}% + 5px)"
        if end > 85:
            return f"right: calc({100 - self.left:.2f}% + 4px)"
        return f"left: calc({end:.2f}% + 4px)"


@dataclass(frozen=True)
class Tick:
    left: float
    label: str

    @property
    def style(self) -> str:
        return f"left: {self.left:.2f}%"


@dataclass(frozen=True)
class Timeline:
    bars: list[Bar]
    ticks: list[Tick]
    span: str
    waited: str = ""  # from the sequence's creation to its first attempt, if long

    def __bool__(self) -> bool:
        return bool(self.bars)


def _label(attempt: StepAttempt) -> str:
    if attempt.outcome in (Outcome.COMPENSATED, Outcome.COMPENSATION_FAILED):
        return f"{attempt.step_index + 1}. {attempt.step} (compensate)"
    if attempt.outcome in (Outcome.RECEIVED, Outcome.EDITED):
        return (
            f"{attempt.step_index + 1}. {attempt.step} ({Outcome(attempt.outcome).label.lower()})"
        )
    return f"{attempt.step_index + 1}. {attempt.step} · try {attempt.attempt}"


def _marks(attempts: list[StepAttempt]) -> list[str]:
    """For each attempt, what started it when it was not the usual course.

    No history row says so; the rows show it. A first try that follows a failed or
    compensated attempt was started by ``retry()`` (``from_step`` when at another step):
    within one epoch RQ's retries count on. A lost attempt was taken over by the sweep.
    """
    marks, before, step = [], None, None  # the previous row, and the previous step's row
    undone = (Outcome.COMPENSATED, Outcome.COMPENSATION_FAILED)
    for attempt in attempts:
        mark = ""
        if attempt.outcome in (Outcome.RECEIVED, Outcome.EDITED):
            marks.append(mark)  # a change of the data between attempts, not one
            continue
        if attempt.outcome == Outcome.LOST:
            mark = "recovered by the sweep"
        elif (
            before is not None
            and attempt.outcome not in undone
            and attempt.attempt == 1
            and attempt.epoch > before.epoch
            and before.outcome in (Outcome.FAILED, *undone)
        ):
            same = step is not None and (step.step_index, step.outcome) == (
                attempt.step_index,
                Outcome.FAILED,
            )
            mark = "retried" if same else f"retried from step {attempt.step_index + 1}"
        marks.append(mark)
        before = attempt
        if attempt.outcome not in undone:
            step = attempt
    return marks


@dataclass(frozen=True, kw_only=True)
class _Span:
    """One bar before it is laid out: when, and what its label and title say."""

    began: datetime
    ended: datetime
    label: str
    outcome: str
    outcome_label: str
    extra: str = ""  # the error's first line
    changes: str = ""
    mark: str = ""

    def bar(self, start: datetime, total: float) -> Bar:
        """Its bar on an axis from ``start``, ``total`` seconds long."""
        width = max((self.ended - self.began).total_seconds() / total * 100, MIN_WIDTH)
        left = min((self.began - start).total_seconds() / total * 100, 100 - width)
        took = format_duration(self.ended - self.began)
        title = (
            f"{self.label}: {self.outcome_label.lower()}, {took}, from "
            f"+{format_duration(self.began - start) or '0s'}{self.extra}"
            + (f" ({self.mark})" if self.mark else "")
            + (f"; changed {self.changes}" if self.changes else "")
        )
        return Bar(
            label=self.label, outcome=self.outcome, outcome_label=self.outcome_label,
            left=left, width=width, took=took, title=title, mark=self.mark,
        )  # fmt: skip


def _spans(record: SequenceRecord, attempts: list[StepAttempt], now: datetime) -> list[_Span]:
    """A span per attempt, and one for the step in flight, if any."""
    spans = []
    for attempt, mark in zip(attempts, _marks(attempts), strict=True):
        outcome = Outcome(attempt.outcome)
        first_line = mask_text(attempt.error, record.data).strip().splitlines()[:1]
        spans.append(
            _Span(
                began=attempt.started_at,
                ended=max(attempt.finished_at, attempt.started_at),
                label=_label(attempt),
                outcome=outcome.value,
                outcome_label=str(outcome.label),
                extra=f" — {first_line[0]}" if first_line else "",
                changes="; ".join(display.change_lines(attempt.changes)),
                mark=mark,
            )
        )
    if record.claim_token and record.step_index < len(record.plan):
        # The step in flight, since its claim (older rows: since the row last changed).
        since = record.claimed_at or record.updated_at
        spans.append(
            _Span(
                began=since,
                ended=max(now, since),
                label=f"{record.step_index + 1}. {record.plan[record.step_index]} · "
                f"try {record.attempt}",
                outcome="in-flight",
                outcome_label="Running",
            )
        )
    return spans


def build(
    record: SequenceRecord, attempts: list[StepAttempt], now: datetime | None = None
) -> Timeline:
    """Lay out ``attempts`` (and the step in flight, if any) between the sequence's start
    and its end, or now while it has not ended."""
    spans = _spans(record, attempts, now or timezone.now())
    if not spans:
        return Timeline([], [], "")
    # The axis starts at the first attempt, so a long wait in the queue (say, for a
    # worker to start) does not squeeze every bar to the right; the wait is shown apart.
    start = min(s.began for s in spans)
    waited = start - record.created_at
    end = max(s.ended for s in spans)
    if record.finished_at is not None:
        end = max(end, record.finished_at)
    total = max((end - start).total_seconds(), 0.001)
    ticks = [
        Tick(
            left=100 * i / (TICKS - 1),
            label="+" + format_duration(timedelta(seconds=total * i / (TICKS - 1))) if i else "0",
        )
        for i in range(TICKS)
    ]
    return Timeline(
        [span.bar(start, total) for span in spans],
        ticks,
        format_duration(timedelta(seconds=total)),
        format_duration(waited) if waited >= timedelta(seconds=1) else "",
    )
