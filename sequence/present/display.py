"""What the admin and the command show of a sequence: durations, the plan, masked JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery
from django.utils import timezone

from sequence.declare.masking import mask_changes, mask_data, mask_text
from sequence.engine.states import TERMINAL, Status
from sequence.models import SequenceEvent, SequenceRecord, StepAttempt


def format_duration(delta: timedelta | None) -> str:
    """``delta`` for people: ``850ms``, ``4.2s``, ``3m 05s``, ``2h 10m``, ``3d 4h``."""
    if delta is None:
        return ""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def duration(record: SequenceRecord, now: datetime | None = None) -> timedelta | None:
    """From creation to the end, or to now while the sequence is not finished."""
    if record.created_at is None:
        return None
    end = record.finished_at
    if end is None:
        # A terminal row without finished_at predates it; updated_at is when it ended.
        end = record.updated_at if record.status in TERMINAL else (now or timezone.now())
    return end - record.created_at


@dataclass(frozen=True)
class PlanStep:
    """One step of a stored plan, and where the sequence is relative to it."""

    index: int
    name: str
    state: str  # "done", "current" or "next"

    @property
    def number(self) -> int:
        return self.index + 1


def plan_steps(record: SequenceRecord) -> list[PlanStep]:
    """The stored plan, each step marked done, current (running or next to run) or next."""
    done = record.steps_done
    steps = []
    for index, name in enumerate(record.plan):
        if index < done:
            state = "done"
        elif index == done and record.status != Status.COMPLETED:
            state = "current"
        else:
            state = "next"
        steps.append(PlanStep(index, str(name), state))
    return steps


def local_time(moment: datetime | None, *, zone: bool = False) -> str:
    """``moment`` in the current time zone, to the second (with the zone's name)."""
    if moment is None:
        return ""
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S" + (" %Z" if zone else ""))


def waiting_text(record: SequenceRecord) -> str:
    """What a sleeping, waiting or queued sequence waits for, in words; "" otherwise."""
    if record.flow_key is not None and not record.has_place and record.status in (
        Status.QUEUED, Status.PAUSED,
    ):  # fmt: skip
        return f"waiting for a place under its concurrency key {record.flow_key!r}"
    if record.waiting_for:
        deadline = f" (times out {local_time(record.wake_at, zone=True)})" if record.wake_at else ""
        return f"waiting for {record.waiting_for!r}{deadline}"
    if record.wake_at is not None and record.status in (Status.SLEEPING, Status.PAUSED):
        return f"sleeping until {local_time(record.wake_at, zone=True)}"
    return ""


def event_detail(event: SequenceEvent, data: Any = None) -> dict[str, Any]:
    """One event sent to a sequence, as JSON, its data masked."""
    return {
        "event": event.name,
        "id": event.event_id,
        "data": mask_data(event.data),
        "received_at": iso(event.received_at),
        "consumed_at": iso(event.consumed_at),
        "consumed_by_step": None if event.consumed_by is None else event.consumed_by + 1,
    }


def with_last_attempt(rows: QuerySet[SequenceRecord]) -> QuerySet[SequenceRecord]:
    """Annotate ``last_attempt``: the attempt number of the last step that ran (from the
    history, through its index), for rows whose own counter went back to 0."""
    last = StepAttempt.objects.filter(sequence=OuterRef("pk")).order_by("-id").values("attempt")
    return rows.annotate(last_attempt=Subquery(last[:1]))


def attempt_shown(record: SequenceRecord) -> str:
    """The attempts of the current step; once finished, of the last step that ran; "-"."""
    if record.attempt:
        return str(record.attempt)
    last = getattr(record, "last_attempt", None)
    return str(last) if last and record.status in TERMINAL else "-"


def subject_text(record: SequenceRecord) -> str:
    """``Order #42`` (the subject as it prints), ``shop.order 42 (deleted)``, or ""."""
    if record.subject_type_id is None and not record.subject_id:
        return ""
    subject = record.subject if record.subject_type_id is not None else None
    if subject is not None:
        return str(subject)
    label = record.subject_type.natural_key() if record.subject_type is not None else ("?", "?")
    return f"{'.'.join(label)} {record.subject_id} (deleted)"


def subject_json(record: SequenceRecord) -> dict[str, Any] | None:
    """The subject as JSON: its model, its pk (as stored, text), how it prints, and
    whether its row still exists."""
    if record.subject_type_id is None and not record.subject_id:
        return None
    subject = record.subject if record.subject_type_id is not None else None
    model = record.subject_type.natural_key() if record.subject_type is not None else None
    return {
        "model": ".".join(model) if model else None,
        "pk": record.subject_id,
        "text": subject_text(record),
        "exists": subject is not None,
    }


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def summary(record: SequenceRecord) -> dict[str, Any]:
    """A sequence as JSON for lists: no data, no history."""
    spent = duration(record)
    return {
        "id": record.pk,
        "name": record.name,
        "status": record.status,
        "progress": {"done": record.progress.done, "total": record.progress.total},
        "current_step": record.current_step,
        "attempt": record.attempt,
        "created_at": iso(record.created_at),
        "updated_at": iso(record.updated_at),
        "finished_at": iso(record.finished_at),
        "duration_seconds": round(spent.total_seconds(), 3) if spent is not None else None,
    }


def change_lines(changes: Any) -> list[str]:
    """A history row's change, masked, a line per key in key order (PostgreSQL keeps no
    order): ``+ key: new``, ``~ key: old -> new``, ``- key``."""
    shown = mask_changes(changes)

    def text(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, default=str)

    added, changed = shown["added"], shown["changed"]
    lines = [f"+ {key}: {text(added[key])}" for key in sorted(added)]
    lines += [
        f"~ {key}: {text(changed[key][0])} -> {text(changed[key][1])}" for key in sorted(changed)
    ]
    lines += [f"- {key}" for key in sorted(shown["removed"])]
    return lines


def attempt_detail(attempt: StepAttempt, data: Any = None) -> dict[str, Any]:
    """One attempt as JSON, its error and traceback masked."""
    return {
        "step_index": attempt.step_index,
        "step": attempt.step,
        "attempt": attempt.attempt,
        "outcome": attempt.outcome,
        "started_at": iso(attempt.started_at),
        "finished_at": iso(attempt.finished_at),
        "duration_seconds": round(attempt.duration.total_seconds(), 3),
        "worker": attempt.worker,
        "error": mask_text(attempt.error, data),
        "traceback": mask_text(attempt.traceback, data),
        "changes": mask_changes(attempt.changes),
    }


def detail(record: SequenceRecord, attempts: list[StepAttempt]) -> dict[str, Any]:
    """A sequence as JSON with its masked data, plan and attempts."""
    return {
        **summary(record),
        "key": record.key,
        "version": record.version,
        "queue": record.queue,
        "subject": subject_json(record),
        "plan": [{"index": s.index, "name": s.name, "state": s.state} for s in plan_steps(record)],
        "data": mask_data(record.data),
        "error": mask_text(record.error, record.data),
        "attempts": [attempt_detail(a, record.data) for a in attempts],
        "waiting": waiting_text(record) or None,
        "wake_at": iso(record.wake_at),
        "events": [event_detail(e) for e in record.events.order_by("id")],
    }
