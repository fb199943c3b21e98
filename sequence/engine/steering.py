"""Pause, resume, cancel and retry, as people and code ask for them.

The handle, the admin and the command call these. Each is one of the state machine's
conditional updates (``sequence.engine.transitions``); here is what goes around it: the
signal once the change commits, the next job queued, a canceled job taken out of RQ.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.dispatch import Signal

from sequence import models, signals
from sequence.declare import registry
from sequence.declare.definitions import SequenceDefinition
from sequence.declare.exceptions import InvalidData, InvalidTransition, UnknownSequence
from sequence.declare.validation import check_data
from sequence.engine import foreach, hooks, places, transitions
from sequence.engine.failure import undo_start
from sequence.engine.moves import Move, after_move
from sequence.engine.rq.dispatch import (
    delete_jobs,
    dispatch_many,
    dispatch_record,
    get_queue,
    job_id,
    queue_for,
)
from sequence.engine.rq.wakes import schedule_wakes
from sequence.engine.states import ASLEEP, TRANSITIONS, Status, sources
from sequence.engine.waiting import consume, wake_due
from sequence.models import Position, SequenceRecord

logger = logging.getLogger("sequence")


def _announce(signal: Signal, record: SequenceRecord, **kwargs: Any) -> None:
    """Send ``signal`` once the transaction that made the change commits."""
    try:
        handle = registry.load(record, SequenceDefinition)
    except UnknownSequence:
        logger.warning("Sequence %s: %r is not registered; no signal sent.", record.pk, record.name)
        return
    transaction.on_commit(
        lambda: hooks.send(signal, type(handle), sequence=handle, **kwargs), robust=True
    )


def _dispatch_on_commit(record: SequenceRecord) -> None:
    transaction.on_commit(lambda: dispatch_record(record), robust=True)


def pause(sequence_id: int | str) -> SequenceRecord:
    """Stop after the step in flight; a queued job finds the sequence paused and ends."""
    with transaction.atomic():
        record, changed = transitions.pause(sequence_id)
        if changed:
            _announce(signals.sequence_paused, record)
    return record


def resume(sequence_id: int | str) -> SequenceRecord:
    """Carry on from the next step, queued once under a new epoch."""
    with transaction.atomic():
        record, changed = transitions.resume(sequence_id)
        if changed:
            if record.status in (Status.PENDING, Status.QUEUED):
                move = Move(Status.PAUSED, Status(record.status))
                transaction.on_commit(lambda: after_move(record, move), robust=True)
            elif record.status == Status.RUNNING and record.items_total is not None:
                # A ForEach: its elements start again, into its free places.
                transaction.on_commit(lambda: foreach.pump(record), robust=True)
            elif record.status == Status.WAITING:
                # Events sent while it was paused were kept for it.
                transaction.on_commit(lambda: consume(record.pk), robust=True)
            if record.status in ASLEEP:
                # Its wake-up job may have come while it was paused, and done nothing.
                transaction.on_commit(lambda: schedule_wakes([record]), robust=True)
            _announce(signals.sequence_resumed, record)
    return record


def cancel(sequence_id: int | str, *, compensate: bool = False) -> SequenceRecord:
    """End the sequence ``canceled``; its queued job is canceled and would do nothing.

    With ``compensate``, the completed steps that define ``compensate()`` are undone
    first, last first, and the sequence ends canceled after them.
    """

    def undo_from(record: SequenceRecord) -> Position | None:
        cls = registry.registered().get(record.name)
        return None if cls is None else undo_start(record, cls, record.step_index)

    with transaction.atomic():
        before = SequenceRecord.objects.find(sequence_id)
        record, changed = transitions.cancel(sequence_id, undo_from if compensate else None)
        if changed:
            # The job may still sit in RQ: take it out. If a worker has it already, its
            # claim or its commit finds the sequence canceled and starts nothing.
            transaction.on_commit(lambda: _cancel_job(before), robust=True)
            move = Move(Status(before.status), Status(record.status))
            transaction.on_commit(lambda: after_move(record, move), robust=True)
    return record


def _cancel_job(record: SequenceRecord) -> None:
    """Take the job of the row's step (as read before the cancel) out of RQ."""
    from rq.exceptions import InvalidJobOperation, NoSuchJobError

    queue = get_queue(queue_for(registry.spec_for(record), record.queue))
    try:
        # Fetched by id, not through queue.fetch_job, which ignores a job of another queue.
        job = queue.job_class.fetch(
            job_id(record.pk, record.step_index, record.epoch),
            connection=queue.connection,
            serializer=queue.serializer,
        )
        if job.get_status() in ("queued", "scheduled", "deferred"):
            # Deleted, not canceled: RQ keeps a canceled job (and its registry entry)
            # with no expiry.
            job.delete()
    except (InvalidJobOperation, NoSuchJobError):
        pass


def retry(
    sequence_id: int | str,
    data: Mapping[str, Any] | None = None,
    *,
    replace: bool = False,
    epoch: int | None = None,
    from_step: str | None = None,
    force: bool = False,
) -> SequenceRecord:
    """Run the failed step again with fresh attempts, after merging ``data`` into the data.

    ``from_step`` moves a failed or paused sequence onto its class's current plan and
    version and goes on from that step. After compensations ran, only with ``force``.
    ``replace=True`` stores ``data`` instead of merging it (the admin's edited data);
    ``epoch`` refuses the retry if the sequence moved since that epoch was read (the
    admin's form was filled in against an older copy).
    """
    if data is not None and not isinstance(data, Mapping):
        raise InvalidData(
            f"retry(data=...) takes a dict of corrections, not {type(data).__name__} {data!r:.80}."
        )

    def merge(record: SequenceRecord) -> dict[str, Any]:
        merged = dict(data or {}) if replace else {**record.data, **(data or {})}
        check_data(merged)
        return merged

    with transaction.atomic():
        if from_step is not None:
            record, changed = _rewind(sequence_id, from_step, merge, epoch)
        else:
            record, changed = transitions.retry(sequence_id, merge, epoch, force=force)
        if changed:
            if record.status == Status.QUEUED:
                transaction.on_commit(lambda: places.free_of(None, record), robust=True)
            else:
                _dispatch_on_commit(record)
            _announce(signals.sequence_retried, record)
    return record


def _rewind(
    sequence_id: int | str,
    from_step: str,
    merge: Callable[[SequenceRecord], dict[str, Any]],
    epoch: int | None,
) -> tuple[SequenceRecord, bool]:
    """Onto the class's current plan, pending at ``from_step``."""
    record = SequenceRecord.objects.find(sequence_id)
    if record.status not in sources("rewind"):
        allowed = " or ".join(sorted(sources("rewind")))
        raise InvalidTransition(
            f"Cannot retry {record} from a step: it is {record.status}; that applies to a "
            f"sequence that is {allowed}."
        )
    if epoch is not None and record.epoch != epoch:
        raise InvalidTransition(
            f"Cannot retry {record}: it changed since you loaded it; look again and retry."
        )
    cls = registry.get_sequence_class(record.name)
    plan = cls.plan_names()
    index = cls.index_of(from_step)
    if index is None:
        raise InvalidData(
            f"{record.name} has no step {from_step!r}; its current plan (version "
            f"{cls.version!r}) is {plan!r}. Retry from one of those."
        )
    if not transitions.rewind(record, plan, str(cls.version), index, merge(record)):
        raise InvalidTransition(f"Cannot retry {record}: it changed meanwhile; try again.")
    return SequenceRecord.objects.find(sequence_id), True


def wake(sequence_id: int | str) -> SequenceRecord:
    """Wake a sleeping sequence now (its Sleep ends early); nothing if it is not asleep."""
    record = SequenceRecord.objects.find(sequence_id)
    if record.status not in sources("wake_now"):
        raise InvalidTransition(f"Cannot wake {record}: it is {record.status}, not sleeping.")
    if transitions.wake_now(record.pk):
        wake_due(pk=record.pk)
    return SequenceRecord.objects.find(sequence_id)


# -- many at once: SequenceRecord.objects....pause(), resume(), cancel() ------------------

# Rows loaded per query to build the handles the signals carry.
CHUNK = 500


def _announce_many(signal: Signal, changed: list[transitions.bulk.Changed]) -> None:
    """Send ``signal`` for each changed row once the transaction commits.

    The rows are read (in chunks) only if the signal has receivers then.
    """

    def send() -> None:
        if not signal.has_listeners():
            return
        ids = [row.id for row in changed]
        for start in range(0, len(ids), CHUNK):
            for record in SequenceRecord.objects.filter(pk__in=ids[start : start + CHUNK]):
                try:
                    handle = registry.load(record, SequenceDefinition)
                except UnknownSequence:
                    logger.warning(
                        "Sequence %s: %r is not registered; no signal sent.", record.pk, record.name
                    )
                    continue
                hooks.send(signal, type(handle), sequence=handle)

    if changed:
        transaction.on_commit(send, robust=True)


def _as_record(row: transitions.bulk.Changed) -> SequenceRecord:
    """What dispatch needs of a changed row (its unit, epoch, queue and plan)."""
    return SequenceRecord(
        pk=row.id, name=row.name, status=row.status, step_index=row.step_index,
        epoch=row.epoch, queue=row.queue, plan=row.plan,
    )  # fmt: skip


def pause_many(queryset: QuerySet[SequenceRecord]) -> int:
    """Pause every row of ``queryset`` that pause applies to, in one statement."""
    with transaction.atomic():
        changed = transitions.bulk.pause(queryset)
        _announce_many(signals.sequence_paused, changed)
    return len(changed)


def resume_many(queryset: QuerySet[SequenceRecord]) -> int:
    """Resume every paused row of ``queryset``, in one statement; queue their next steps
    (one Redis pipeline per queue) once it commits."""
    with transaction.atomic():
        changed = transitions.bulk.resume(queryset)
        due = [_as_record(row) for row in changed if row.status == Status.PENDING]
        if due:
            transaction.on_commit(lambda: dispatch_many(due), robust=True)
        waiting = [row.id for row in changed if row.status == Status.WAITING]
        running = [row.id for row in changed if row.status == Status.RUNNING]
        if waiting or running:
            transaction.on_commit(lambda: _carry_on(waiting, running), robust=True)
        asleep = [row.id for row in changed if row.status in ASLEEP]
        if asleep:
            rows = SequenceRecord.objects.filter(pk__in=asleep).only(*WAKE_FIELDS)
            transaction.on_commit(lambda: schedule_wakes(rows), robust=True)
        _free_places(changed)
        _announce_many(signals.sequence_resumed, changed)
    return len(changed)


# What scheduling a wake-up job reads of a row.
WAKE_FIELDS = ("name", "plan", "step_index", "epoch", "queue", "wake_at")


def _carry_on(waiting: list[int], running: list[int]) -> None:
    """After a resume: waits take the events kept for them, ForEach fill their places."""
    for pk in waiting:
        consume(pk)
    for record in SequenceRecord.objects.filter(pk__in=running, items_total__isnull=False):
        foreach.pump(record)


def cancel_many(queryset: QuerySet[SequenceRecord]) -> int:
    """Cancel every row of ``queryset`` that cancel applies to, in one statement; delete
    their waiting jobs from Redis once it commits."""
    with transaction.atomic():
        changed = transitions.bulk.cancel(queryset)
        if changed:
            transaction.on_commit(lambda: _delete_jobs(changed), robust=True)
        _free_places(changed)
        _announce_many(signals.sequence_canceled, changed)
    return len(changed)


def _free_places(changed: list[transitions.bulk.Changed]) -> None:
    """Once the change commits: the keys of changed rows under a Concurrency (ended, or
    queued again) give their free places to their next queued sequences."""
    counted = {
        row.name
        for row in changed
        if getattr(registry.registered().get(row.name), "concurrency", None)
    }
    if not counted:
        return

    def free() -> None:
        ids = [row.id for row in changed if row.name in counted]
        keys = SequenceRecord.objects.filter(pk__in=ids, flow_key__isnull=False)
        for name, key in keys.values_list("name", "flow_key").distinct():
            if key is not None:
                places.free(None, name, key)

    transaction.on_commit(free, robust=True)


def _delete_jobs(changed: list[transitions.bulk.Changed]) -> None:
    """Delete the waiting job of each canceled row's step (a running one finds the row
    canceled when it commits, and starts nothing)."""
    by_queue: dict[str, list[str]] = {}
    for row in changed:
        record = _as_record(row)
        name = queue_for(registry.spec_for(record), record.queue)
        by_queue.setdefault(name, []).append(job_id(row.id, row.step_index, row.epoch))
    for name, ids in by_queue.items():
        delete_jobs(name, ids, waiting_only=True)


def handle_of(record: SequenceRecord) -> SequenceDefinition:
    """The instance of the row's registered class showing it."""
    return registry.load(record, SequenceDefinition)


models.VERBS.update(pause=pause_many, resume=resume_many, cancel=cancel_many, handle=handle_of)

ACTIONS: dict[str, Callable[..., SequenceRecord]] = {
    "pause": pause,
    "resume": resume,
    "cancel": cancel,
    "retry": retry,
    "wake": wake,
}
assert set(ACTIONS) <= set(TRANSITIONS)
