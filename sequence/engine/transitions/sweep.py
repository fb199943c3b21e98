"""The recovery sweep's one statement: a stuck row moved on, if still as read."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db.models import F
from django.db.models.functions import Now

from sequence.declare.conf import settings
from sequence.engine import history
from sequence.engine.states import Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED, compensating
from sequence.engine.transitions.walk import walk_on
from sequence.models import Position, SequenceRecord

# -- the sweep ----------------------------------------------------------------------------


def recover(
    record: SequenceRecord,
    step: str,
    reason: str,
    *,
    undo_from: Position | None = None,
    undo_next: Position | None = None,
) -> str:
    """Move one stuck row on, if it is still as the sweep read it.

    Returns what happened: ``"redispatched"`` (due again under a new epoch: queue it),
    ``"failed"`` (its step was recovered SEQUENCE_MAX_RECOVERIES times; with
    ``undo_from``, the sequence is compensating from there and its first compensation
    is due), ``"undone"`` (a compensation recovered that often counts as failed; the
    walk goes on at ``undo_next`` or ends), ``"released"`` (paused or canceled: only the
    claim is dropped), or ``""`` (it moved meanwhile). Call it inside a transaction, and
    act on the answer once it commits.
    """
    lost_claim = record.claim_token is not None
    rows = SequenceRecord.objects.filter(pk=record.pk, epoch=record.epoch, status=record.status)
    rows = (
        rows.filter(claim_token=record.claim_token)
        if lost_claim
        else rows.filter(claim_token__isnull=True)
    )
    rows = rows.filter(status__in=sources("recover"))
    index = record.undo_index if record.status == Status.COMPENSATING else record.step_index
    entry = history.Entry(
        sequence_id=record.pk, step_index=index or 0, step=step, epoch=record.epoch,
        attempt=record.attempt, outcome=Outcome.LOST,
        started_at=record.claimed_at or record.updated_at, worker=record.claimed_by,
    )  # fmt: skip
    worn_out = lost_claim and record.recoveries >= settings.MAX_RECOVERIES
    if worn_out and record.status == Status.COMPENSATING:
        error = (
            f"worker died during the compensation of {step} (recovered {record.recoveries} times)"
        )
        if not rows.update(**walk_on(undo_next, f"; {error}")):
            return ""
        history.write(_with(entry, error, Outcome.COMPENSATION_FAILED))
        return "undone"
    if worn_out and record.status in sources("recover", Status.FAILED):
        error = f"worker died during step {step} (recovered {record.recoveries} times)"
        # A new epoch fences RQ's own retries of the job that kept dying.
        ending: dict[str, Any] = {
            "status": Status.FAILED,
            "finished_at": Now(),
            "dispatch_due": None,
        }
        if undo_from is not None:
            ending = compensating(undo_from, Status.FAILED)
        if not rows.update(
            epoch=F("epoch") + 1, error=error, updated_at=Now(), **ending, **RELEASED
        ):
            return ""
        history.write(_with(entry, error))
        return "failed"
    if lost_claim and record.status not in sources("recover", Status.RETRYING) | {
        Status.COMPENSATING
    }:
        # Paused or canceled while its worker died: drop the claim, keep the status.
        if not rows.update(recoveries=F("recoveries") + 1, updated_at=Now(), **RELEASED):
            return ""
        history.write(_with(entry, f"{reason}; the step runs again when the sequence is resumed"))
        return "released"
    running = lost_claim and record.status == Status.RUNNING
    if not rows.update(
        status=Status.RETRYING if running else record.status,
        epoch=F("epoch") + 1,
        recoveries=F("recoveries") + (1 if lost_claim else 0),
        dispatch_due=Now(), updated_at=Now(), **RELEASED,
    ):  # fmt: skip
        return ""
    if lost_claim:
        history.write(_with(entry, f"{reason}; recovered ({record.recoveries + 1})"))
    return "redispatched"


def _with(entry: history.Entry, error: str, outcome: str = "") -> history.Entry:
    return dataclasses.replace(entry, error=error, outcome=outcome or entry.outcome)
