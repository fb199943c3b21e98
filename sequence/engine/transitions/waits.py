"""Sleeping and waiting: a Sleep's or WaitFor's commit, the wake-up, and the timeout.

A Sleep or WaitFor is claimed like a step; its commit moves the sequence past it and
into ``sleeping`` or ``waiting``, with the wake-up time (or the wait's deadline) and the
awaited event on the row. Waking is conditional on the status and epoch read, so two
processes waking the same row wake it once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from sequence.declare.exceptions import StepFenced
from sequence.engine import history
from sequence.engine.claims import Claim
from sequence.engine.states import Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED, compensating
from sequence.models import Position, SequenceRecord


def commit_wait(claim: Claim, status: Status, wake_at: datetime | None, waiting_for: str) -> str:
    """Move past the claimed Sleep or WaitFor into ``status`` (sleeping or waiting).

    Returns the status it moved from: running, or paused or canceled meanwhile (then the
    row keeps that status, with the wake-up time and event for a later resume).
    """
    record = claim.record
    moved = {
        "step_index": record.step_index + 1, "epoch": record.epoch + 1, "attempt": 0,
        "recoveries": 0, "error": "", "dispatch_due": None, "updated_at": Now(),
        "wake_at": wake_at, "waiting_for": waiting_for, **RELEASED,
    }  # fmt: skip
    with transaction.atomic():
        mine = claim.mine().filter(lease_until__gt=Now())
        if mine.filter(status__in=sources("commit", status)).update(status=status, **moved):
            was = Status.RUNNING
        elif mine.filter(status__in=sources("commit_held")).update(**moved):
            was = Status.PAUSED
        else:
            raise StepFenced(
                f"step {record.step_index} lost its claim (taken over, or the sequence was "
                "retried or recovered); it does not start its wait."
            )
        history.write(claim.entry(Outcome.SUCCEEDED))
    claim.settled = True
    return was


def wake(record: SequenceRecord, data: dict[str, Any] | None = None) -> Status | None:
    """The sequence goes on past its Sleep or WaitFor, if still as read.

    With ``data`` (a consumed event's, merged), it replaces the data, and the WaitFor's
    history gets a row with the change. Returns the new
    status (pending with the next step due, or completed after a last item), or None.
    """
    last = record.step_index >= len(record.plan)
    target = Status.COMPLETED if last else Status.PENDING
    fields: dict[str, Any] = {
        "status": target, "epoch": F("epoch") + 1, "wake_at": None, "waiting_for": "",
        "dispatch_due": None if last else Now(), "finished_at": Now() if last else None,
        "updated_at": Now(),
    }  # fmt: skip
    if data is not None:
        fields["data"] = data
    rows = SequenceRecord.objects.filter(
        pk=record.pk, epoch=record.epoch, status=record.status, status__in=sources("wake", target)
    )
    with transaction.atomic():
        if not rows.update(**fields):
            return None
        if data is not None:
            # The WaitFor's second row: the event it took, and what its data changed.
            wait = record.step_index - 1
            history.write(
                history.Entry(
                    sequence_id=record.pk,
                    step_index=wait,
                    step=record.plan[wait],
                    epoch=record.epoch,
                    attempt=1,
                    outcome=Outcome.RECEIVED,
                    started_at=record.updated_at or timezone.now(),
                    worker=f"event {record.waiting_for}"[:200],
                    changes=history.changes(record.data, data),
                )
            )
    return target


def time_out(record: SequenceRecord, error: str, undo_from: Position | None) -> Status | None:
    """A WaitFor's deadline passed with on_timeout="fail": failed, or compensating first.

    The sequence is back on its WaitFor, which failed (a history row says so): a retry
    waits for the event again, with a new deadline.
    """
    wait = record.step_index - 1
    ending: dict[str, Any] = {"status": Status.FAILED, "finished_at": Now(), "dispatch_due": None}
    if undo_from is not None:
        ending = compensating(undo_from, Status.FAILED)
    rows = SequenceRecord.objects.filter(
        pk=record.pk, epoch=record.epoch, status__in=sources("time_out"), wake_at__lte=Now()
    )
    entry = history.Entry(
        sequence_id=record.pk, step_index=wait, step=record.plan[wait], epoch=record.epoch,
        attempt=1, outcome=Outcome.FAILED, started_at=record.updated_at or timezone.now(),
        error=error,
    )  # fmt: skip
    with transaction.atomic():
        changed = rows.update(
            **ending, step_index=wait, epoch=F("epoch") + 1, error=error, wake_at=None,
            waiting_for="", updated_at=Now(),
        )  # fmt: skip
        if changed:
            history.write(entry)
    return ending["status"] if changed else None


def wake_now(sequence_id: int) -> bool:
    """A sleeping sequence's wake-up time is now (the admin's "wake now")."""
    return bool(
        SequenceRecord.objects.filter(pk=sequence_id, status__in=sources("wake_now")).update(
            wake_at=Now(), updated_at=Now()
        )
    )
