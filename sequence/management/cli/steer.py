"""The subcommands that change sequences: start, send, pause, resume, cancel, retry, prune."""

from __future__ import annotations

from dataclasses import dataclass, fields
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


@dataclass(frozen=True, kw_only=True)
class Request:
    """What ``pause``, ``resume``, ``cancel`` or ``retry`` was asked to do, and to which."""

    action: str
    ids: list[int]
    name: str | None = None
    status: list[str] | None = None
    data: dict[str, Any] | None = None  # retry: corrections merged first
    from_step: str | None = None  # retry: onto the current plan, from this step
    force: bool = False  # retry: even after compensations ran
    compensate: bool = False  # cancel: run the compensations

    @classmethod
    def of(cls, action: str, options: dict[str, Any]) -> Request:
        known = {f.name for f in fields(cls)} - {"action"}
        return cls(action=action, **{k: v for k, v in options.items() if k in known})

    def apply(self, sequence_id: int) -> SequenceRecord:
        if self.action == "retry":
            return steering.retry(
                sequence_id, self.data, from_step=self.from_step, force=self.force
            )
        if self.action == "cancel":
            return steering.cancel(sequence_id, compensate=self.compensate)
        return steering.ACTIONS[self.action](sequence_id)


def handle_action(out: Output, request: Request) -> None:
    action = request.action
    if request.name is not None and request.ids:
        raise CommandError("Give sequence ids or --name, not both.")
    if request.name is not None:
        handle_many(out, action, request.name, request.status, request.compensate)
        return
    if request.status:
        raise CommandError("--status goes with --name: give --name NAME --status STATUS.")
    if not request.ids:
        raise CommandError(
            f"Say which sequences to {action}: their ids, or --name NAME [--status STATUS]."
        )
    results = [_steer_one(out, request, pk) for pk in dict.fromkeys(request.ids)]  # in order
    if out.as_json:
        out.json(results)
    failed = [r for r in results if not r["ok"]]
    if failed:
        raise CommandError(
            f"{len(failed)} of {len(results)} sequences could not be {PAST[action]}."
        )


def _steer_one(out: Output, request: Request, sequence_id: int) -> dict[str, Any]:
    """Apply the request to one sequence, print what it did; its JSON result."""
    before = SequenceRecord.objects.filter(pk=sequence_id).values_list("status", flat=True).first()
    try:
        record = request.apply(sequence_id)
    except (UnknownSequence, InvalidTransition, InvalidData) as exc:
        if not out.as_json:
            out.error(out.command.style.ERROR(f"#{sequence_id}: {exc}"))
        return {"id": sequence_id, "ok": False, "error": str(exc)}
    changed = record.status != before or request.action == "retry"
    if not out.as_json:
        if changed:
            out.line(
                f"#{sequence_id} {PAST[request.action]}: {before} -> {out.status(record.status)}"
            )
        else:
            out.line(f"#{sequence_id} unchanged: already {out.status(record.status)}")
    return {"id": sequence_id, "ok": True, "changed": changed, "status": record.status}


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
