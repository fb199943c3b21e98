"""Requests: pause, resume, cancel, retry and rewind, as people and code ask for them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from sequence.declare.exceptions import InvalidTransition
from sequence.engine import history
from sequence.engine.states import IDEMPOTENT, TERMINAL, Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED, compensating, rows
from sequence.models import Position, SequenceRecord

# -- requests: pause, resume, cancel, retry -------------------------------------------------

# A conditional update that found the row in another status re-reads it and tries
# again while that status is still one the action starts from: the row changed between
# the two statements. Each round means another request won a race, so few are needed.
ROUNDS = 5


def _refuse(action: str, record: SequenceRecord) -> SequenceRecord:
    """Return ``record`` if ``action`` is a no-op in its status; raise otherwise."""
    if record.status in IDEMPOTENT.get(action, ()):
        return record
    allowed = ", ".join(sorted(sources(action)))
    raise InvalidTransition(
        f"Cannot {action} {record}: it is {record.status}; {action} applies to a sequence "
        f"that is {allowed}."
    )


def _apply(
    action: str, sequence_id: int | str, update: Callable[[], int]
) -> tuple[SequenceRecord, bool]:
    """Run ``update`` until it changes the row or the row's status rules the action out.

    Returns the row as it is afterwards, and whether this call changed it.
    """
    for _ in range(ROUNDS):
        changed = update()
        record = SequenceRecord.objects.find(sequence_id)
        if changed:
            return record, True
        if record.status not in sources(action):
            return _refuse(action, record), False
    raise InvalidTransition(
        f"Cannot {action} {record}: its status kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row


def pause(sequence_id: int | str) -> tuple[SequenceRecord, bool]:
    """Stop after the step in flight; a queued job finds the sequence paused and ends."""
    return _apply(
        "pause",
        sequence_id,
        lambda: rows("pause", sequence_id).update(status=Status.PAUSED, updated_at=Now()),
    )


def resume(sequence_id: int | str) -> tuple[SequenceRecord, bool]:
    """Running again if the step in flight still holds its claim; waiting or sleeping
    again if it was paused in a WaitFor, or in a Sleep whose time has not come; queued
    again if it was paused before it had a place; else pending (queue the next step)."""

    def update() -> int:
        # A step still in flight keeps its claim: it commits and queues its successor.
        if (
            rows("resume", sequence_id, Status.RUNNING)
            .filter(claim_token__isnull=False)
            .update(status=Status.RUNNING, updated_at=Now())
        ):
            return 1
        idle = rows("resume", sequence_id).filter(claim_token__isnull=True)
        # Paused before it had a place under its Concurrency: it waits for one again.
        if idle.filter(flow_key__isnull=False, has_place=False).update(
            status=Status.QUEUED, updated_at=Now()
        ):
            return 1
        idle = idle.exclude(flow_key__isnull=False, has_place=False)
        if idle.exclude(waiting_for="").update(status=Status.WAITING, updated_at=Now()):
            return 1
        if idle.filter(waiting_for="", wake_at__gt=Now()).update(
            status=Status.SLEEPING, updated_at=Now()
        ):
            return 1
        return idle.filter(waiting_for="").update(
            status=Status.PENDING, epoch=F("epoch") + 1, dispatch_due=Now(), wake_at=None,
            updated_at=Now(),
        )  # fmt: skip

    return _apply("resume", sequence_id, update)


def cancel(
    sequence_id: int | str, undo_from: Callable[[SequenceRecord], Position | None] | None = None
) -> tuple[SequenceRecord, bool]:
    """End the sequence ``canceled``; with ``undo_from``, compensating first.

    ``undo_from`` gives, for the row as read, the last completed step with an undo (or
    None): the sequence then compensates from there, under a new epoch (fencing a
    step still in flight), and ends canceled.
    """

    def update() -> int:
        record = SequenceRecord.objects.find(sequence_id)
        start = undo_from(record) if undo_from is not None else None
        if start is None:
            return rows("cancel", sequence_id, Status.CANCELED).update(
                status=Status.CANCELED, dispatch_due=None, finished_at=Now(), updated_at=Now(),
                wake_at=None, waiting_for="",
            )  # fmt: skip
        return (
            rows("cancel", sequence_id, Status.COMPENSATING)
            .filter(step_index=record.step_index, epoch=record.epoch)
            .update(
                **compensating(start, Status.CANCELED),
                epoch=F("epoch") + 1,
                updated_at=Now(),
                wake_at=None,
                waiting_for="",
                **RELEASED,
            )
        )

    return _apply("cancel", sequence_id, update)


def retry(
    sequence_id: int | str,
    merge: Callable[[SequenceRecord], dict[str, Any]],
    epoch: int | None,
    *,
    force: bool = False,
) -> tuple[SequenceRecord, bool]:
    """Pending again with fresh attempts and the data ``merge`` makes of the row's.

    ``epoch`` refuses the retry if the sequence moved since that epoch was read. After
    its compensations ran, only with ``force``.
    """
    for _ in range(ROUNDS):
        record = SequenceRecord.objects.find(sequence_id)
        if record.status not in sources("retry"):
            return _refuse("retry", record), False
        if epoch is not None and record.epoch != epoch:
            raise InvalidTransition(
                f"Cannot retry {record}: it changed since you loaded it; look again and retry."
            )
        if record.compensated and not force:
            raise InvalidTransition(
                f"Cannot retry {record}: its compensations ran, undoing what its steps did, "
                "so running the failed step again may act on undone work. If that is what "
                "you want, retry with force=True (--force, or the admin's force box)."
            )
        data = merge(record)
        # Conditional on the epoch read above: data merged into a copy that changed
        # meanwhile is not written.
        same = rows("retry", sequence_id).filter(epoch=record.epoch)
        with transaction.atomic():
            if same.update(
                **_due(record), data=data, epoch=F("epoch") + 1, attempt=0,
                recoveries=0, error="", finished_at=None, updated_at=Now(),
                undo_index=None, ends_as="",
            ):  # fmt: skip
                _edited(record, record.step_index, data)
                return SequenceRecord.objects.find(sequence_id), True
    raise InvalidTransition(
        f"Cannot retry sequence {sequence_id}: it kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row


def _due(record: SequenceRecord) -> dict[str, Any]:
    """A retried (or rewound) sequence's next step is due; under a Concurrency it first
    waits queued for a place, unless it still holds one (a paused sequence)."""
    if record.flow_key is not None and not (record.has_place and record.status not in TERMINAL):
        return {"status": Status.QUEUED, "has_place": False, "dispatch_due": None}
    return {"status": Status.PENDING, "dispatch_due": Now()}


def rewind(
    record: SequenceRecord, plan: list[str], version: str, index: int, data: dict[str, Any]
) -> bool:
    """Onto a new plan and version, pending at step ``index``, if still as read.

    A step still in flight (a paused sequence's) is fenced by the new epoch.
    """
    with transaction.atomic():
        moved = (
            rows("rewind", record.pk)
            .filter(epoch=record.epoch)
            .update(
                **_due(record),
                plan=plan,
                version=version,
                step_index=index,
                data=data,
                epoch=F("epoch") + 1,
                attempt=0,
                recoveries=0,
                error="",
                finished_at=None,
                undo_index=None,
                ends_as="",
                updated_at=Now(),
                wake_at=None,
                waiting_for="",
                **RELEASED,
            )
        )
        if moved:
            _edited(record, index, data, plan)
    return bool(moved)


def _edited(
    record: SequenceRecord, index: int, data: dict[str, Any], plan: list[str] | None = None
) -> None:
    """A history row for the data a person changed in a retry, if it changed."""
    change = history.changes(record.data, data)
    if not change:
        return
    steps = plan or record.plan
    history.write(
        history.Entry(
            sequence_id=record.pk,
            step_index=index,
            step=steps[index] if index < len(steps) else "",
            epoch=record.epoch,
            attempt=0,
            outcome=Outcome.EDITED,
            started_at=timezone.now(),
            worker="retry with data",
            changes=change,
        )
    )
