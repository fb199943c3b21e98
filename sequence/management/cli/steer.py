"""The subcommands that change sequences: start, send, pause, resume, cancel, retry, prune."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError

from sequence.declare.exceptions import (
    InvalidData,
    InvalidTransition,
    SequenceError,
    UnknownSequence,
)
from sequence.declare.registry import get_sequence_class, registered
from sequence.engine import steering, waiting
from sequence.engine.starting import start
from sequence.models import SequenceRecord
from sequence.ops.retention import prune
from sequence.present import display

if TYPE_CHECKING:
    from datetime import timedelta


from sequence.management.cli.show import Output, age_text, record_or_error


def handle_send(
    out: Output, id: int, event: str, data: dict[str, Any], event_id: str | None, **_: Any
) -> None:
    try:
        row = waiting.send(id, event, data, id=event_id)
    except (UnknownSequence, InvalidTransition, InvalidData) as exc:
        raise CommandError(str(exc)) from None
    record = record_or_error(id)
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
    if not count and not SequenceRecord.objects.filter(name=name).exists():
        known = sorted(n for n in registered() if n.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1])
        hint = f" Did you mean {' or '.join(known)}?" if known else ""
        out.line(f"No sequence is named {name!r}: names are app_label.ClassName.{hint}")


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
            f"finished more than {age_text(older_than)} ago."
        )
    else:
        out.line(f"Deleted {result}.")
