"""Pause, resume, cancel and retry: each a conditional update, safe against races.

Every status change made on request goes through this module (the handle, the admin
and the command call it); the runner and the sweep make the changes a running step
causes. Each change is one ``UPDATE ... WHERE status IN (<the table's sources>)``
(see ``sequence.states.TRANSITIONS``): of two requests racing each other, or a request
racing a step's commit, exactly one applies, and no lock is held while a step runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.db import transaction
from django.db.models import F, QuerySet
from django.db.models.functions import Now
from django.dispatch import Signal

from sequence import hooks, signals
from sequence.dispatch import dispatch, get_queue, job_id
from sequence.exceptions import InvalidData, InvalidTransition, UnknownSequence
from sequence.models import SequenceRecord
from sequence.states import IDEMPOTENT, TRANSITIONS, Status, sources
from sequence.validation import check_data

logger = logging.getLogger("sequence")

# A conditional update that found the row in another status re-reads it and tries
# again while that status is still one the action starts from: the row changed between
# the two statements. Each round means another request won a race, so few are needed.
ROUNDS = 5


def _load(sequence_id: int | str) -> SequenceRecord:
    try:
        return SequenceRecord.objects.get(pk=sequence_id)
    except (SequenceRecord.DoesNotExist, ValueError, TypeError):
        raise UnknownSequence(f"No sequence has the id {sequence_id!r}.") from None


def _rows(action: str, sequence_id: int | str, **conditions: Any) -> QuerySet[SequenceRecord]:
    """The row, if it is in a status ``action`` starts from (and meets ``conditions``)."""
    return SequenceRecord.objects.filter(pk=sequence_id, status__in=sources(action), **conditions)


def _refuse(action: str, record: SequenceRecord) -> SequenceRecord:
    """Return ``record`` if ``action`` is a no-op in its status; raise otherwise."""
    if record.status in IDEMPOTENT[action]:
        return record
    allowed = ", ".join(sorted(sources(action)))
    raise InvalidTransition(
        f"Cannot {action} {record}: it is {record.status}; {action} applies to a sequence "
        f"that is {allowed}."
    )


def _apply(
    action: str, sequence_id: int | str, update: Callable[[], int]
) -> tuple[SequenceRecord, bool]:
    """Run ``update`` until it changes the row or the row's status rules the action out."""
    for _ in range(ROUNDS):
        changed = update()
        record = _load(sequence_id)
        if changed:
            return record, True
        if record.status not in sources(action):
            return _refuse(action, record), False
    raise InvalidTransition(
        f"Cannot {action} {record}: its status kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row


def _announce(signal: Signal, record: SequenceRecord, **kwargs: Any) -> None:
    """Send ``signal`` once the transaction that made the change commits."""
    from sequence.definitions import Sequence

    try:
        handle = Sequence._from_record(record)
    except UnknownSequence:
        logger.warning("Sequence %s: %r is not registered; no signal sent.", record.pk, record.name)
        return
    transaction.on_commit(
        lambda: hooks.send(signal, type(handle), sequence=handle, **kwargs), robust=True
    )


def pause(sequence_id: int | str) -> SequenceRecord:
    """Stop after the step in flight; a queued job finds the sequence paused and ends."""
    with transaction.atomic():
        record, changed = _apply(
            "pause",
            sequence_id,
            lambda: _rows("pause", sequence_id).update(status=Status.PAUSED, updated_at=Now()),
        )
        if changed:
            _announce(signals.sequence_paused, record)
    return record


def resume(sequence_id: int | str) -> SequenceRecord:
    """Carry on from the next step, queued once under a new epoch."""

    def update() -> int:
        # A step still in flight keeps its claim: it commits and queues its successor.
        if _rows("resume", sequence_id, claim_token__isnull=False).update(
            status=Status.RUNNING, updated_at=Now()
        ):
            return 1
        return _rows("resume", sequence_id, claim_token__isnull=True).update(
            status=Status.PENDING,
            epoch=F("epoch") + 1,
            dispatch_due=Now(),
            updated_at=Now(),
        )

    with transaction.atomic():
        record, changed = _apply("resume", sequence_id, update)
        if changed:
            if record.status == Status.PENDING:
                _dispatch_on_commit(record)
            _announce(signals.sequence_resumed, record)
    return record


def cancel(sequence_id: int | str) -> SequenceRecord:
    """End the sequence ``canceled``; its queued job is canceled and would do nothing."""
    with transaction.atomic():
        record, changed = _apply(
            "cancel",
            sequence_id,
            lambda: _rows("cancel", sequence_id).update(
                status=Status.CANCELED, dispatch_due=None, finished_at=Now(), updated_at=Now()
            ),
        )
        if changed:
            _announce(signals.sequence_canceled, record)
            # The job may still sit in RQ: take it out. If a worker has it already, its
            # claim or its commit finds the sequence canceled and starts nothing.
            transaction.on_commit(lambda: _cancel_job(record), robust=True)
    return record


def _cancel_job(record: SequenceRecord) -> None:
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    from sequence.runner import spec_for

    spec = spec_for(record.name, record.plan, record.step_index)
    queue = get_queue((spec and spec.cls.queue) or record.queue)
    try:
        # Fetched by id, not through queue.fetch_job, which ignores a job of another queue.
        job = queue.job_class.fetch(
            job_id(record.pk, record.step_index, record.epoch),
            connection=queue.connection,
            serializer=queue.serializer,
        )
        if job.get_status() in ("queued", "scheduled", "deferred"):
            job.cancel()
    except (InvalidJobOperation, NoSuchJobError):
        pass


def retry(
    sequence_id: int | str,
    data: Mapping[str, Any] | None = None,
    *,
    replace: bool = False,
    epoch: int | None = None,
) -> SequenceRecord:
    """Run the failed step again with fresh attempts, after merging ``data`` into the data.

    ``replace=True`` stores ``data`` instead of merging it (the admin's edited data);
    ``epoch`` refuses the retry if the sequence moved since that epoch was read (the
    admin's form was filled in against an older copy).
    """
    if data is not None and not isinstance(data, Mapping):
        raise InvalidData(
            f"retry(data=...) takes a dict of corrections, not {type(data).__name__} {data!r:.80}."
        )
    for _ in range(ROUNDS):
        record = _load(sequence_id)
        if record.status not in sources("retry"):
            return _refuse("retry", record)
        if epoch is not None and record.epoch != epoch:
            raise InvalidTransition(
                f"Cannot retry {record}: it changed since you loaded it; look again and retry."
            )
        merged = dict(data or {}) if replace else {**record.data, **(data or {})}
        check_data(merged)
        with transaction.atomic():
            # Conditional on the epoch read above: data merged into a copy that changed
            # meanwhile is not written.
            changed = _rows("retry", sequence_id, epoch=record.epoch).update(
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
            if changed:
                record = _load(sequence_id)
                _dispatch_on_commit(record)
                _announce(signals.sequence_retried, record)
                return record
    raise InvalidTransition(
        f"Cannot retry sequence {sequence_id}: it kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row


def _dispatch_on_commit(record: SequenceRecord) -> None:
    from sequence.runner import spec_for

    args = (record.pk, record.step_index, record.epoch, record.queue)
    spec = spec_for(record.name, record.plan, record.step_index)
    transaction.on_commit(lambda: dispatch(*args, spec), robust=True)


ACTIONS: dict[str, Callable[..., SequenceRecord]] = {
    "pause": pause,
    "resume": resume,
    "cancel": cancel,
    "retry": retry,
}
assert set(ACTIONS) <= set(TRANSITIONS)
