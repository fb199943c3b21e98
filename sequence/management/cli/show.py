"""What ``manage.py sequence list`` and ``show`` print: for people, or JSON with --json."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.contrib.contenttypes.models import ContentType
from django.core.management.base import CommandError
from django.db.models import QuerySet

from sequence.declare.masking import mask_data, mask_text
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops.health import no_worker_note
from sequence.present import display, elements

if TYPE_CHECKING:
    from datetime import timedelta

    from django.core.management.base import BaseCommand


def _table(
    rows: list[list[str]], styles: dict[int, Callable[[str], str]] | None = None
) -> list[str]:
    """Rows as aligned columns; ``styles`` colour a column's cells after padding them."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = []
        for column, (cell, width) in enumerate(zip(row, widths, strict=True)):
            padded = cell.ljust(width)
            if number and styles and column in styles:
                padded = padded.replace(cell, styles[column](cell), 1)
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return lines


def age_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


class Output:
    """Writes to the command's streams, styled for a terminal."""

    def __init__(self, command: BaseCommand, as_json: bool) -> None:
        self.command = command
        self.as_json = as_json

    def line(self, text: str = "") -> None:
        self.command.stdout.write(text)

    def error(self, text: str) -> None:
        self.command.stderr.write(text)

    def json(self, value: Any) -> None:
        self.command.stdout.write(json.dumps(value, indent=2, ensure_ascii=False))

    def status(self, status: str) -> str:
        style = self.command.style
        styler: Callable[[str], str] = {
            Status.COMPLETED: style.SUCCESS,
            Status.FAILED: style.ERROR,
            Status.CANCELED: style.NOTICE,
            Status.PAUSED: style.WARNING,
            Status.RETRYING: style.WARNING,
        }.get(Status(status), str)
        return styler(status)


# -- the subcommands -----------------------------------------------------------------------


def _subject_rows(value: tuple[str, str, str]) -> QuerySet[SequenceRecord]:
    app_label, model_name, pk = value
    try:
        content_type = ContentType.objects.get_by_natural_key(app_label, model_name.lower())
    except ContentType.DoesNotExist:
        raise CommandError(
            f"No model {app_label}.{model_name} is installed; write app_label.Model:pk, "
            "such as shop.Order:42."
        ) from None
    return SequenceRecord.objects.filter(subject_type=content_type, subject_id=pk)


def handle_list(
    out: Output,
    status: list[str] | None,
    name: str | None,
    limit: int,
    subject: tuple[str, str, str] | None = None,
    **_: Any,
) -> None:
    queryset: QuerySet[SequenceRecord] = SequenceRecord.objects.defer("data", "error")
    if subject is not None:
        queryset = _subject_rows(subject).defer("data", "error")
    if status:
        queryset = queryset.filter(status__in=status)
    if name:
        queryset = queryset.filter(name=name)
    records = list(display.with_last_attempt(queryset.order_by("-id")[:limit]))
    if out.as_json:
        out.json([display.summary(r) for r in records])
        return
    if not records:
        out.line("No sequences match.")
        return
    header = ["ID", "NAME", "STATUS", "PROGRESS", "CURRENT STEP", "ATTEMPT", "CREATED", "DURATION"]
    rows = [header] + [
        [
            str(r.pk),
            r.name,
            r.status,
            f"{r.steps_done}/{r.total_steps}",
            r.current_step or "-",
            display.attempt_shown(r),
            display.local_time(r.created_at),
            display.format_duration(display.duration(r)),
        ]
        for r in records
    ]
    for text in _table(rows, {2: out.status}):
        out.line(text)


def record_or_error(sequence_id: int) -> SequenceRecord:
    try:
        return SequenceRecord.objects.get(pk=sequence_id)
    except SequenceRecord.DoesNotExist:
        raise CommandError(f"No sequence has the id {sequence_id}.") from None


def _outcome_style(out: Output) -> Callable[[str], str]:
    style = out.command.style

    def styled(outcome: str) -> str:
        if outcome in ("succeeded", "compensated"):
            return style.SUCCESS(outcome)
        return style.ERROR(outcome)

    return styled


def handle_show(out: Output, id: int, tracebacks: bool, history: bool, **_: Any) -> None:
    record = record_or_error(id)
    attempts = list(StepAttempt.objects.filter(sequence_id=record.pk).order_by("id"))
    fans = elements.of(record)
    if out.as_json:
        out.json({**display.detail(record, attempts), "items": _items_json(record, fans)})
        return
    rows = [
        ["status", out.status(record.status)],
        ["progress", f"{record.steps_done}/{record.total_steps} steps"],
        ["current step", record.current_step or "-"],
        ["key", record.key or "-"],
        *([["concurrency key", record.flow_key]] if record.flow_key is not None else []),
        ["version", record.version or "-"],
        ["queue", record.queue],
        ["subject", display.subject_text(record) or "-"],
        ["created", display.local_time(record.created_at)],
        ["updated", display.local_time(record.updated_at)],
        ["finished", display.local_time(record.finished_at) or "-"],
        ["duration", display.format_duration(display.duration(record))],
    ]
    if waiting := display.waiting_text(record):
        rows.insert(1, ["waiting", waiting])
    if note := no_worker_note(record):
        rows.insert(1, ["warning", out.command.style.WARNING(note)])
    rows[2:2] = [["elements", str(fan)] for fan in fans if fan.step_index == record.step_index]
    if record.error:
        rows.append(["error", out.command.style.ERROR(mask_text(record.error, record.data))])
    out.line(out.command.style.MIGRATE_HEADING(f"Sequence #{record.pk} {record.name}"))
    for label, value in rows:
        out.line(f"  {label:<13}{value}")
    out.line()
    out.line(out.command.style.MIGRATE_HEADING("Plan"))
    marks = {"done": "done", "current": f"<- {record.status}", "next": ""}
    for step in display.plan_steps(record):
        pointer = ">" if step.state == "current" else " "
        out.line(f"  {pointer} {step.number:>2}. {step.name:<30} {marks[step.state]}".rstrip())
    out.line()
    out.line(out.command.style.MIGRATE_HEADING("Data"))
    for text in json.dumps(mask_data(record.data), indent=2, ensure_ascii=False).splitlines():
        out.line(f"  {text}")
    _show_elements(out, fans)
    _show_events(out, record)
    out.line()
    out.line(out.command.style.MIGRATE_HEADING(f"Attempts ({len(attempts)})"))
    if not attempts:
        out.line("  none yet")
        return
    header = ["#", "STEP", "TRY", "OUTCOME", "STARTED", "TOOK", "WORKER"]
    table = _table(
        [header]
        + [
            [
                str(a.step_index + 1),
                a.step,
                str(a.attempt),
                a.outcome,
                display.local_time(a.started_at),
                display.format_duration(a.duration),
                a.worker,
            ]
            for a in attempts
        ],
        {3: _outcome_style(out)},
    )
    out.line(f"  {table[0]}")
    for attempt, text in zip(attempts, table[1:], strict=True):
        out.line(f"  {text}")
        if attempt.error:
            out.line(out.command.style.ERROR(f"      {mask_text(attempt.error, record.data)}"))
        if tracebacks and attempt.traceback:
            for tb_line in mask_text(attempt.traceback, record.data).rstrip().splitlines():
                out.line(f"      | {tb_line}")
        if history:
            for change in display.change_lines(attempt.changes):
                out.line(f"      {change}")


def _items_json(record: SequenceRecord, fans: list[elements.Elements]) -> dict[str, Any] | None:
    """The ``items`` of ``show --json``: the elements of the ForEach at the current step
    (running, or the one that failed), else of the last ForEach that ran; None if none."""
    current = [fan for fan in fans if fan.step_index == record.step_index]
    chosen = current or fans[-1:]
    return chosen[0].as_json() if chosen else None


def _show_elements(out: Output, fans: list[elements.Elements]) -> None:
    for fan in fans:
        out.line()
        out.line(
            out.command.style.MIGRATE_HEADING(
                f"Elements of step {fan.step_index + 1} ({fan.step}): {fan}"
            )
        )
        for failed in fan.failures:
            item = f" {failed.item}" if failed.item else ""
            out.line(f"  element {failed.index}{item}, {failed.attempts} attempts:")
            out.line(out.command.style.ERROR(f"      {failed.error}"))
        if fan.more_failed:
            out.line(f"  ...and {fan.more_failed} more failed, not listed")
        if fan.compensated:
            out.line(f"  compensated: {fan.compensated_ranges}")


def _show_events(out: Output, record: SequenceRecord) -> None:
    events = list(record.events.order_by("id"))
    if not events:
        return
    out.line()
    out.line(out.command.style.MIGRATE_HEADING(f"Events ({len(events)})"))
    for event in events:
        taken = (
            f"consumed by step {event.consumed_by + 1}" if event.consumed_by is not None else "kept"
        )
        ident = f" id {event.event_id}" if event.event_id else ""
        data = json.dumps(mask_data(event.data), ensure_ascii=False)
        received = display.local_time(event.received_at)
        out.line(f"  {received}  {event.name}{ident}  {data}  ({taken})")
