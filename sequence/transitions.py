"""Pause, resume, cancel and retry: each one conditional update, safe against races.

Every change of status made on request goes through this module; the runner makes
the changes a running step causes (claim, commit, failure).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now

from sequence import hooks, signals
from sequence.dispatch import dispatch, get_queue, job_id
from sequence.exceptions import InvalidTransition, UnknownSequence
from sequence.models import SequenceRecord
from sequence.states import ACTIVE, IDEMPOTENT, TRANSITIONS, Status
from sequence.validation import check_data


def _load(sequence_id: int) -> SequenceRecord:
    try:
        return SequenceRecord.objects.get(pk=sequence_id)
    except SequenceRecord.DoesNotExist:
        raise UnknownSequence(f"No sequence has the id {sequence_id!r}.") from None


def _refuse(action: str, record: SequenceRecord) -> SequenceRecord:
    """Return ``record`` if ``action`` is a no-op in its status; raise otherwise."""
    if record.status in IDEMPOTENT[action]:
        return record
    allowed = ", ".join(sorted(TRANSITIONS[action]))
    raise InvalidTransition(
        f"Cannot {action} {record}: it is {record.status}; {action} applies to {allowed}."
    )


def _announce(signal: Any, record: SequenceRecord, **kwargs: Any) -> None:
    from sequence.definitions import Sequence

    try:
        handle = Sequence._from_record(record)
    except UnknownSequence:
        return
    transaction.on_commit(
        lambda: hooks.send(signal, type(handle), sequence=handle, **kwargs), robust=True
    )


def pause(sequence_id: int) -> SequenceRecord:
    """Stop after the step in flight; a queued job finds the sequence paused and ends."""
    changed = SequenceRecord.objects.filter(pk=sequence_id, status__in=ACTIVE).update(
        status=Status.PAUSED, updated_at=Now()
    )
    record = _load(sequence_id)
    if not changed:
        return _refuse("pause", record)
    _announce(signals.sequence_paused, record)
    return record


def resume(sequence_id: int) -> SequenceRecord:
    """Carry on from the next step, queued once under a new epoch."""
    # A step still in flight keeps its claim: it will commit and queue its successor.
    changed = SequenceRecord.objects.filter(
        pk=sequence_id, status=Status.PAUSED, claim_token__isnull=False
    ).update(status=Status.RUNNING, updated_at=Now())
    with transaction.atomic():
        if not changed:
            changed = SequenceRecord.objects.filter(
                pk=sequence_id, status=Status.PAUSED, claim_token__isnull=True
            ).update(
                status=Status.PENDING, epoch=F("epoch") + 1, dispatch_due=Now(), updated_at=Now()
            )
            record = _load(sequence_id)
            if changed:
                _dispatch_on_commit(record)
        else:
            record = _load(sequence_id)
        if not changed:
            return _refuse("resume", record)
        _announce(signals.sequence_resumed, record)
    return record


def cancel(sequence_id: int) -> SequenceRecord:
    """End the sequence ``canceled``; its queued job is canceled and would do nothing."""
    with transaction.atomic():
        changed = SequenceRecord.objects.filter(
            pk=sequence_id, status__in=TRANSITIONS["cancel"]
        ).update(status=Status.CANCELED, dispatch_due=None, finished_at=Now(), updated_at=Now())
        record = _load(sequence_id)
        if not changed:
            return _refuse("cancel", record)
        _announce(signals.sequence_canceled, record)
    transaction.on_commit(lambda: _cancel_job(record), robust=True)
    return record


def _cancel_job(record: SequenceRecord) -> None:
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    queue = get_queue(record.queue)
    try:
        job = queue.fetch_job(job_id(record.pk, record.step_index, record.epoch))
        if job is not None and job.get_status() in ("queued", "scheduled", "deferred"):
            job.cancel()
    except (InvalidJobOperation, NoSuchJobError):
        pass


def retry(sequence_id: int, data: Mapping[str, Any] | None = None) -> SequenceRecord:
    """Run the failed step again with fresh attempts, after merging ``data``."""
    record = _load(sequence_id)
    if record.status != Status.FAILED:
        _refuse("retry", record)
        return record
    merged = {**record.data, **(data or {})}
    check_data(merged)
    with transaction.atomic():
        # Conditional on the epoch read above: a concurrent change makes this a no-op.
        changed = SequenceRecord.objects.filter(
            pk=sequence_id, status=Status.FAILED, epoch=record.epoch
        ).update(
            status=Status.PENDING,
            data=merged,
            epoch=F("epoch") + 1,
            attempt=0,
            recoveries=0,
            error="",
            finished_at=None,
            dispatch_due=Now(),
            updated_at=Now(),
        )
        record = _load(sequence_id)
        if not changed:
            return _refuse("retry", record)
        _dispatch_on_commit(record)
    return record


def _dispatch_on_commit(record: SequenceRecord) -> None:
    from sequence.runner import spec_for

    args = (record.pk, record.step_index, record.epoch, record.queue)
    transaction.on_commit(
        lambda: dispatch(*args, spec_for(record.name, record.plan, record.step_index)),
        robust=True,
    )
