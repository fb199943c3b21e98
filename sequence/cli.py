"""The steering subcommands of ``manage.py sequence``: list, show, start, pause, resume,
cancel, retry and prune. Each prints for people, or JSON with ``--json``; each failure
is a CommandError (exit status 1), each bad argument a usage error (exit status 2)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.contrib.contenttypes.models import ContentType
from django.core.management.base import CommandError
from django.db.models import QuerySet

from sequence import display, elements, steering, waiting
from sequence.exceptions import InvalidData, InvalidTransition, SequenceError, UnknownSequence
from sequence.masking import mask_data, mask_text
from sequence.models import SequenceRecord, StepAttempt
from sequence.registry import get_sequence_class
from sequence.retention import parse_age, prune
from sequence.starting import start
from sequence.states import Status

if TYPE_CHECKING:
    from datetime import timedelta

    from django.core.management.base import BaseCommand

MAX_LIMIT = 10_000


# -- argument types: each error message says what was wrong and what to write -------


def sequence_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a sequence id; ids are whole numbers such as 42 "
            "(see `manage.py sequence list`)."
        )
    return value


def limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a limit; give a whole number from 1 to {MAX_LIMIT}."
        )
    return value


def batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size; give a number from 1.")
    return value


def age(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subject(text: str) -> tuple[str, str, str]:
    """``app_label.Model:pk`` as (app label, model name, pk)."""
    model, sep, pk = text.partition(":")
    app_label, dot, name = model.rpartition(".")
    if not (sep and dot and app_label and name and pk):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subject; write app_label.Model:pk, such as shop.Order:42."
        )
    return app_label, name, pk


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline, or read from a file as ``@path``."""
    source = "the JSON"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read {str(path)!r}: {exc.strerror}."
            ) from None
        source = f"the JSON in {str(path)!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{source} is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            """Write an object such as '{"name": "Ada"}' (quote it for the shell)."""
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{source} is {type(value).__name__} {value!r:.60}; give an object such as "
            """'{"name": "Ada"}'."""
        )
    return value


# -- the parsers -----------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add the steering subcommands to the ``sequence`` command's subparsers."""

    def add(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        parser.add_argument("--json", action="store_true", help="Print JSON for programs.")
        return parser

    p = add("list", "List sequences, newest first.")
    p.add_argument(
        "--status",
        action="append",
        choices=Status.values,
        metavar="STATUS",
        help=f"Only this status (repeat for several): {', '.join(Status.values)}.",
    )
    p.add_argument("--name", help="Only sequences with this registered name, e.g. shop.Checkout.")
    p.add_argument(
        "--subject",
        type=subject,
        metavar="app_label.Model:pk",
        help="Only sequences started about this object, e.g. shop.Order:42.",
    )
    p.add_argument("--limit", type=limit, default=20, help="At most this many (default 20).")

    p = add("show", "Show one sequence: status, plan, data and attempts.")
    p.add_argument("id", type=sequence_id, help="The sequence id.")
    p.add_argument(
        "--tracebacks", action="store_true", help="Print each failed attempt's traceback."
    )

    p = add("send", "Send an event to a sequence (a WaitFor of its plan takes it).")
    p.add_argument("id", type=sequence_id, help="The sequence id.")
    p.add_argument("event", help="The event's name, as its WaitFor names it.")
    p.add_argument(
        "--data", type=json_object, default=None,
        help="The event's data, merged into the sequence's: a JSON object or @file.json.",
    )  # fmt: skip
    p.add_argument(
        "--id", dest="event_id", metavar="EVENT_ID",
        help="The sender's id for the event: sending the same id again is ignored.",
    )  # fmt: skip

    p = add("start", "Start a sequence.")
    p.add_argument("sequence_name", metavar="NAME", help="Registered name, e.g. shop.Checkout.")
    p.add_argument(
        "--data",
        type=json_object,
        default={},
        help="""Starting data as a JSON object, e.g. '{"name": "Ada"}', or @file.json.""",
    )
    p.add_argument("--key", help="Start key: starting again with it returns the same sequence.")
    p.add_argument("--queue", help="RQ queue for this sequence (default: the sequence's).")

    for action, text in (
        ("pause", "Pause sequences: the step in flight finishes, no further step starts."),
        ("resume", "Resume paused sequences from their next step."),
        ("cancel", "Cancel sequences: no further step starts."),
        ("retry", "Run failed sequences' failed step again with fresh attempts."),
    ):
        p = add(action, text)
        p.add_argument("ids", nargs="*", type=sequence_id, metavar="ID", help="Sequence ids.")
        if action != "retry":
            p.add_argument(
                "--name",
                help="Instead of ids: every sequence with this registered name that the "
                "action applies to, in one statement (with --status, only those).",
            )
            p.add_argument(
                "--status",
                action="append",
                choices=Status.values,
                metavar="STATUS",
                help="With --name: only sequences in this status (repeat for several).",
            )
        if action == "cancel":
            p.add_argument(
                "--compensate",
                action="store_true",
                help="Undo the completed steps first (their compensate()), last first.",
            )
        if action == "retry":
            p.add_argument(
                "--data",
                type=json_object,
                default=None,
                help="Corrections merged into the data first, as a JSON object or @file.json.",
            )
            p.add_argument(
                "--from-step",
                metavar="NAME",
                help="Move onto the sequence's current plan and version, from this step.",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="Retry even though its compensations ran.",
            )

    p = add("prune", "Delete finished sequences and their history once they are old.")
    p.add_argument(
        "--older-than",
        type=age,
        required=True,
        metavar="AGE",
        help="Finished longer ago than this: 30d, 12h, 90m, 45s or 2w.",
    )
    p.add_argument(
        "--batch-size", type=batch_size, default=1000, help="Rows per transaction (1000)."
    )
    p.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")


# -- output helpers ----------------------------------------------------------------------


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


def _age(delta: timedelta) -> str:
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


def _get(sequence_id: int) -> SequenceRecord:
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


def handle_show(out: Output, id: int, tracebacks: bool, **_: Any) -> None:
    record = _get(id)
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


def handle_send(
    out: Output, id: int, event: str, data: dict[str, Any], event_id: str | None, **_: Any
) -> None:
    try:
        row = waiting.send(id, event, data, id=event_id)
    except (UnknownSequence, InvalidTransition, InvalidData) as exc:
        raise CommandError(str(exc)) from None
    record = _get(id)
    if out.as_json:
        out.json({**display.summary(record), "event": display.event_detail(row)})
        return
    out.line(f"Sent {event!r} to #{id}: it is now {out.status(record.status)}.")


def handle_start(
    out: Output,
    sequence_name: str,
    data: dict[str, Any],
    key: str | None,
    queue: str | None,
    **_: Any,
) -> None:
    try:
        cls = get_sequence_class(sequence_name)
    except UnknownSequence as exc:
        raise CommandError(str(exc)) from None
    existed = key is not None and SequenceRecord.objects.filter(name=cls.name, key=key).exists()
    try:
        record = start(cls, data, key=key, queue=queue)
    except SequenceError as exc:
        raise CommandError(f"Cannot start {sequence_name}: {exc}") from None
    if out.as_json:
        out.json({**display.summary(record), "key": record.key, "existing": existed})
        return
    if existed:
        out.line(
            f"Sequence #{record.pk} {record.name} already started with key {key!r}: {out.status(record.status)}."
        )
    else:
        out.line(out.command.style.SUCCESS(f"Started sequence #{record.pk} {record.name}."))


PAST = {"pause": "paused", "resume": "resumed", "cancel": "canceled", "retry": "retried"}


def handle_many(
    out: Output, action: str, name: str, status: list[str] | None, compensate: bool = False
) -> None:
    """pause, resume or cancel every sequence called ``name`` (in ``status``) at once."""
    if compensate:
        raise CommandError(
            "--compensate works with ids only: each sequence's compensations are worked "
            "out one by one. Without --compensate, --name cancels all at once."
        )
    rows = SequenceRecord.objects.filter(name=name)
    if status:
        rows = rows.filter(status__in=status)
    count: int = getattr(rows, action)()
    if out.as_json:
        out.json({"action": action, "name": name, "status": status or [], "changed": count})
        return
    which = f"{name} sequences" + (f" that were {' or '.join(status)}" if status else "")
    out.line(f"{PAST[action].capitalize()} {count} {which}.")


def handle_action(
    out: Output,
    action: str,
    ids: list[int],
    data: dict[str, Any] | None = None,
    from_step: str | None = None,
    force: bool = False,
    compensate: bool = False,
    name: str | None = None,
    status: list[str] | None = None,
    **_: Any,
) -> None:
    if name is not None and ids:
        raise CommandError("Give sequence ids or --name, not both.")
    if name is not None:
        handle_many(out, action, name, status, compensate)
        return
    if status:
        raise CommandError("--status goes with --name: give --name NAME --status STATUS.")
    if not ids:
        raise CommandError(
            f"Say which sequences to {action}: their ids, or --name NAME [--status STATUS]."
        )
    results: list[dict[str, Any]] = []
    for sequence_id in dict.fromkeys(ids):  # each id once, in the order given
        before = (
            SequenceRecord.objects.filter(pk=sequence_id).values_list("status", flat=True).first()
        )
        try:
            if action == "retry":
                record = steering.retry(sequence_id, data, from_step=from_step, force=force)
            elif action == "cancel":
                record = steering.cancel(sequence_id, compensate=compensate)
            else:
                record = steering.ACTIONS[action](sequence_id)
        except (UnknownSequence, InvalidTransition, InvalidData) as exc:
            results.append({"id": sequence_id, "ok": False, "error": str(exc)})
            if not out.as_json:
                out.error(out.command.style.ERROR(f"#{sequence_id}: {exc}"))
            continue
        changed = record.status != before or action == "retry"
        results.append({"id": sequence_id, "ok": True, "changed": changed, "status": record.status})
        if out.as_json:
            continue
        if changed:
            out.line(f"#{sequence_id} {PAST[action]}: {before} -> {out.status(record.status)}")
        else:
            out.line(f"#{sequence_id} unchanged: already {out.status(record.status)}")
    if out.as_json:
        out.json(results)
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise CommandError(
            f"{len(failed)} of {len(results)} sequences could not be {PAST[action]}."
        )


def handle_prune(
    out: Output, older_than: timedelta, batch_size: int, dry_run: bool, **_: Any
) -> None:
    result = prune(older_than, batch_size=batch_size, dry_run=dry_run)
    if out.as_json:
        out.json(
            {
                "sequences": result.sequences,
                "attempts": result.attempts,
                "batches": result.batches,
                "jobs": result.jobs,
                "dry_run": dry_run,
            }
        )
    elif dry_run:
        out.line(
            f"Would delete {result.sequences} sequences and {result.attempts} attempts "
            f"finished more than {_age(older_than)} ago."
        )
    else:
        out.line(f"Deleted {result}.")


def run(command: BaseCommand, subcommand: str, options: dict[str, Any]) -> None:
    """Run one steering subcommand with its parsed ``options``."""
    out = Output(command, bool(options.pop("json", False)))
    if subcommand in PAST:
        handle_action(out, subcommand, **options)
    elif subcommand == "list":
        handle_list(out, **options)
    elif subcommand == "show":
        handle_show(out, **options)
    elif subcommand == "start":
        handle_start(out, **options)
    elif subcommand == "send":
        handle_send(out, **options)
    elif subcommand == "prune":
        handle_prune(out, **options)
    else:
        raise CommandError(f"Unknown subcommand {subcommand!r}.")


SUBCOMMANDS = ("list", "show", "start", "send", "pause", "resume", "cancel", "retry", "prune")
