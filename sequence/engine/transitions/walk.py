"""The compensation walk: one compensation at a time, last completed step first.

The walk's position is on the row (``undo_index``), so a crash resumes it where it
stopped; each compensation is claimed and fenced by epoch and token like a step.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Case, F, Q, TextField, Value, When
from django.db.models.functions import Concat, Now
from django.utils import timezone

from sequence.engine import history
from sequence.engine.claims import Claim, Taker, lease_seconds
from sequence.engine.rq.dispatch import Work
from sequence.engine.states import ITEM_TRANSITIONS, Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED
from sequence.models import ItemStatus, Position, SequenceItem, SequenceRecord, ago

# -- the compensation walk ------------------------------------------------------------------


def walk_on(undo_next: Position | None, note: str = "") -> dict[str, Any]:
    """The changes that end one compensation: on to ``undo_next``, or the walk's end."""
    fields: dict[str, Any] = {
        "attempt": 0, "recoveries": 0, "updated_at": Now(), **RELEASED,
    }  # fmt: skip
    if note:
        fields["error"] = Concat(F("error"), Value(note), output_field=TextField())
    if undo_next is not None:
        return {
            **fields, "undo_index": undo_next[0], "undo_item": undo_next[1], "dispatch_due": Now()
        }  # fmt: skip
    return {
        **fields,
        "undo_index": -1,
        "undo_item": None,
        "dispatch_due": None,
        "finished_at": Now(),
        "status": Case(
            When(ends_as=Status.CANCELED, then=Value(Status.CANCELED)),
            default=Value(Status.FAILED),
        ),
    }


def claim_undo(work: Work, taker: Taker) -> Claim | None:
    """Take the compensation the walk is at, if the row still expects it; None if stale."""
    sequence_id, index, epoch, item = work.sequence, work.index, work.epoch, work.element
    worker, token, timeout = taker.worker, taker.token, taker.timeout
    rows = SequenceRecord.objects.filter(
        Q(claim_token__isnull=True) | Q(claim_token=token),
        pk=sequence_id, epoch=epoch, undo_index=index, undo_item=item,
        status__in=sources("compensate"),
    )  # fmt: skip
    if not rows.update(
        claim_token=token, claimed_by=worker[:200], claimed_at=Now(),
        lease_until=ago(-lease_seconds(timeout)), dispatch_due=None, updated_at=Now(),
        attempt=Case(When(claim_token=token, then=F("attempt")), default=F("attempt") + 1),
    ):  # fmt: skip
        return None
    record = SequenceRecord.objects.get(pk=sequence_id)
    return Claim(
        record=record, token=token, worker=worker, started_at=timezone.now(), timeout=timeout,
        undo_index=index, undo_item=item,
    )  # fmt: skip


def undo_failed(claim: Claim, error: str, tb: str) -> bool:
    """Record a compensation attempt that raised and will be retried; False if not ours."""
    with transaction.atomic():
        if (
            not claim.mine()
            .filter(status__in=sources("compensate"))
            .update(updated_at=Now(), **RELEASED)
        ):
            claim.settled = True
            return False
        history.write(claim.entry(Outcome.COMPENSATION_FAILED, error, tb))
    claim.settled = True
    return True


def undo_done(
    claim: Claim, undo_next: Position | None, error: str = "", tb: str = "", note: str = ""
) -> Status | None:
    """End the claimed compensation (with ``error``: failed for good) and walk on.

    Returns compensating (``undo_next`` is due), or the status the walk ended in, or
    None if the claim was no longer ours.
    """
    outcome = Outcome.COMPENSATION_FAILED if error else Outcome.COMPENSATED
    with transaction.atomic():
        if not claim.mine().filter(status__in=sources("undo")).update(**walk_on(undo_next, note)):
            claim.settled = True
            return None
        if claim.undo_item is not None:
            SequenceItem.objects.filter(
                sequence_id=claim.record.pk, step_index=claim.index, index=claim.undo_item,
                status__in=sources("compensate", of=ITEM_TRANSITIONS),
            ).update(status=ItemStatus.UNDONE)  # fmt: skip
        history.write(claim.entry(outcome, error, tb))
    claim.settled = True
    if undo_next is not None:
        return Status.COMPENSATING
    return Status.CANCELED if claim.record.ends_as == Status.CANCELED else Status.FAILED
