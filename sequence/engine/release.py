"""Giving a claim back: a claim released without a result (the step due again), one
this process could not release while the database was away (released later), and the
end of a job the row no longer expects."""

from __future__ import annotations

import logging

from django.db import connection, transaction

from sequence.declare.conf import settings
from sequence.declare.registry import spec_for
from sequence.engine import tracing, transitions
from sequence.engine.claims import Claim
from sequence.engine.rq.dispatch import (
    Work,
    dispatch,
    dispatch_record,
)
from sequence.engine.rq.registries import LiveJobs
from sequence.engine.states import MOVING
from sequence.models import SequenceRecord

logger = logging.getLogger("sequence")


def current(sequence_id: int) -> SequenceRecord | None:
    """The row as it is now, with whether its outbox entry is overdue."""
    return (
        SequenceRecord.objects.filter(pk=sequence_id).with_overdue(settings.DISPATCH_GRACE).first()
    )


def stale(record: SequenceRecord | None, sequence_id: int, step_index: int, epoch: int) -> None:
    """A job the row no longer expects: queue a successor whose dispatch was lost, then end.

    Only an overdue outbox entry whose job RQ no longer holds is queued again here (the
    sweep would do the same later); anything else would just add a duplicate.
    """
    if record is None:
        logger.warning(
            "Sequence %s no longer exists; its step job ends.", sequence_id,
            extra=tracing.log_fields(sequence_id),
        )  # fmt: skip
        return
    logger.info(
        "Sequence %s: the job of step %s under epoch %s is stale (the sequence is %s at "
        "step %s, epoch %s); it ends without running.",
        f"{record.name} #{record.pk}", step_index + 1, epoch, record.status,
        record.step_index + 1, record.epoch,
        extra=tracing.log_fields(record.pk, record.name),
    )  # fmt: skip
    if (
        getattr(record, "overdue", False)
        and record.status in MOVING
        and record.epoch > epoch
        and record.pk not in LiveJobs().live([record])
    ):
        dispatch_record(record)


# Claims this process could not release because the database was unreachable; the
# worker's maintenance thread retries them (sequence.ops.worker).
orphans: list[Claim] = []


def release(claim: Claim, error: str) -> None:
    """Give up a claim without a result; queue the step again if it is due."""
    with transaction.atomic():
        if transitions.release(claim, error):
            record = claim.record
            work = Work(sequence=record.pk, index=record.step_index, epoch=record.epoch + 1)
            spec = spec_for(record)
            transaction.on_commit(lambda: dispatch(work, record.queue, spec), robust=True)


def release_or_remember(claim: Claim) -> None:
    """Release the claim, or leave it to the worker to release once the database is back."""
    try:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        release(claim, "the worker could not finish the job; the step runs again")
    except Exception:
        logger.exception(
            "Sequence %s: could not release the claim on step %s; retrying in the background.",
            claim.record.pk, claim.record.step_index,
        )  # fmt: skip
        orphans.append(claim)


def release_orphans() -> None:
    """Release the claims this process could not release earlier (database back)."""
    while orphans:
        claim = orphans[0]
        release(claim, "the worker could not finish the job; the step runs again")
        orphans.pop(0)
