"""The admin's timeline: one bar per attempt along a time axis, laid out for CSS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

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


def build(
    record: SequenceRecord, attempts: list[StepAttempt], now: datetime | None = None
) -> Timeline:
    """Lay out ``attempts`` (and the step in flight, if any) between the sequence's start
    and its end, or now while it has not ended."""
    now = now or timezone.now()
    spans: list[tuple[datetime, datetime, dict[str, Any]]] = []
    for attempt, mark in zip(attempts, _marks(attempts), strict=True):
        outcome = Outcome(attempt.outcome)
        first_line = mask_text(attempt.error, record.data).strip().splitlines()[:1]
        spans.append(
            (
                attempt.started_at,
                max(attempt.finished_at, attempt.started_at),
                {
                    "label": _label(attempt),
                    "outcome": outcome.value,
                    "outcome_label": str(outcome.label),
                    "extra": f" — {first_line[0]}" if first_line else "",
                    "changes": "; ".join(display.change_lines(attempt.changes)),
                    "mark": mark,
                },
            )
        )
    if record.claim_token and record.step_index < len(record.plan):
        # The step in flight, since its claim (older rows: since the row last changed).
        since = record.claimed_at or record.updated_at
        spans.append(
            (
                since,
                max(now, since),
                {
                    "label": f"{record.step_index + 1}. {record.plan[record.step_index]} · "
                    f"try {record.attempt}",
                    "outcome": "in-flight",
                    "outcome_label": "Running",
                    "extra": "",
                    "changes": "",
                    "mark": "",
                },
            )
        )
    if not spans:
        return Timeline([], [], "")
    # The axis starts at the first attempt, so a long wait in the queue (say, for a
    # worker to start) does not squeeze every bar to the right; the wait is shown apart.
    start = min(s[0] for s in spans)
    waited = start - record.created_at
    end = max(s[1] for s in spans)
    if record.finished_at is not None:
        end = max(end, record.finished_at)
    total = max((end - start).total_seconds(), 0.001)
    bars = []
    for began, ended, info in spans:
        left = (began - start).total_seconds() / total * 100
        width = max((ended - began).total_seconds() / total * 100, MIN_WIDTH)
        left = min(left, 100 - width)
        took = format_duration(ended - began)
        title = (
            f"{info['label']}: {info['outcome_label'].lower()}, {took}, from "
            f"+{format_duration(began - start) or '0s'}{info['extra']}"
            + (f" ({info['mark']})" if info["mark"] else "")
            + (f"; changed {info['changes']}" if info["changes"] else "")
        )
        bars.append(
            Bar(
                label=info["label"],
                outcome=info["outcome"],
                outcome_label=info["outcome_label"],
                left=left,
                width=width,
                took=took,
                title=title,
                mark=info["mark"],
            )
        )
    ticks = [
        Tick(
            left=100 * i / (TICKS - 1),
            label="0"
            if i == 0
            else "+" + format_duration(timedelta(seconds=total * i / (TICKS - 1))),
        )
        for i in range(TICKS)
    ]
    return Timeline(
        bars,
        ticks,
        format_duration(timedelta(seconds=total)),
        format_duration(waited) if waited >= timedelta(seconds=1) else "",
    )
