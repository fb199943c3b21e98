"""The recovery sweep: queue again every sequence that should be moving but is not."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now

from sequence.conf import settings
from sequence.dispatch import dispatch, get_queue, job_id
from sequence.models import SequenceRecord, StepAttempt
from sequence.states import Outcome, Status

logger = logging.getLogger("sequence")


@dataclass
class SweepResult:
    """What one sweep did, by sequence id."""

    redispatched: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return f"redispatched {len(self.redispatched)}, failed {len(self.failed)}"


def _job_alive(record: SequenceRecord) -> bool:
    """Whether RQ still holds a job for the row's step and epoch."""
    from rq.exceptions import NoSuchJobError

    queue = get_queue(record.queue)
    try:
        job = queue.fetch_job(job_id(record.pk, record.step_index, record.epoch))
    except NoSuchJobError:
        return False
    if job is None:
        return False
    return job.get_status(refresh=False) in ("queued", "scheduled", "started", "deferred")


def candidates(grace: int) -> list[SequenceRecord]:
    """Rows that look stuck: an overdue outbox entry, an expired lease, or a retry long due."""
    overdue = Now() - timedelta(seconds=grace)
    return list(
        SequenceRecord.objects.filter(
            Q(dispatch_due__lt=overdue)
            | Q(status=Status.RUNNING, lease_until__lt=Now())
            | Q(status__in=[Status.PENDING, Status.RETRYING], dispatch_due__isnull=True,
                updated_at__lt=overdue)
        ).order_by("id")[:1000]
    )  # fmt: skip


def sweep(grace: int | None = None) -> SweepResult:
    """Re-dispatch stuck sequences under a new epoch; safe to run from many processes."""
    grace = settings.DISPATCH_GRACE if grace is None else grace
    result = SweepResult()
    for record in candidates(grace):
        if record.status != Status.RUNNING and _job_alive(record):
            continue
        _recover(record, result)
    if result.redispatched or result.failed:
        logger.warning("Recovery sweep: %s", result)
    return result


def _recover(record: SequenceRecord, result: SweepResult) -> None:
    from sequence.runner import spec_for

    lost_claim = record.status == Status.RUNNING
    limit = settings.MAX_RECOVERIES
    step = record.plan[record.step_index] if record.step_index < len(record.plan) else "?"
    # Conditional on the epoch we read: a step that moved meanwhile is left alone.
    mine = SequenceRecord.objects.filter(pk=record.pk, epoch=record.epoch, status=record.status)
    with transaction.atomic():
        if lost_claim and record.recoveries >= limit:
            error = f"worker died during step {step} (recovered {record.recoveries} times)"
            changed = mine.update(
                status=Status.FAILED, claim_token=None, claimed_by="", lease_until=None,
                error=error, finished_at=Now(), updated_at=Now(),
            )  # fmt: skip
            if changed:
                _lost(record, error)
                result.failed.append(record.pk)
            return
        changed = mine.update(
            status=Status.RETRYING if lost_claim else record.status,
            epoch=F("epoch") + 1,
            recoveries=F("recoveries") + (1 if lost_claim else 0),
            claim_token=None, claimed_by="", lease_until=None,
            dispatch_due=Now(), updated_at=Now(),
        )  # fmt: skip
        if not changed:
            return
        if lost_claim:
            _lost(record, f"worker {record.claimed_by or '?'} stopped holding step {step}")
        args = (record.pk, record.step_index, record.epoch + 1, record.queue)
        spec = spec_for(record.name, record.plan, record.step_index)
        transaction.on_commit(lambda: dispatch(*args, spec), robust=True)
    result.redispatched.append(record.pk)


def _lost(record: SequenceRecord, error: str) -> None:
    from django.utils import timezone

    StepAttempt.objects.create(
        sequence_id=record.pk, step_index=record.step_index,
        step=record.plan[record.step_index], epoch=record.epoch, attempt=record.attempt,
        outcome=Outcome.LOST, started_at=record.updated_at, finished_at=timezone.now(),
        worker=record.claimed_by, error=error,
    )  # fmt: skip
