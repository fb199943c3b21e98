"""Waiting: ``Sleep`` and ``WaitFor`` as they run, events sent to a sequence, and waking.

The database is the truth. A sleeping sequence's wake-up time, and a wait's deadline,
are on its row (``wake_at``, with a partial index); waking is a query for what is due,
run by every worker's maintenance thread and by the recovery sweep, so its cost follows
what is due, not what sleeps. Outside a ``sequence worker`` (``rqworker``), an RQ job
scheduled at each wake-up time and deadline runs that query for its one sequence; losing
it loses nothing, and it never wakes what the row does not say is due. Events are rows:
one sent before its ``WaitFor`` is reached is kept and consumed when the sequence gets
there; consuming an event and moving the sequence on are one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence import signals
from sequence.declare import registry
from sequence.declare.definitions import SequenceDefinition, StepSpec
from sequence.declare.exceptions import InvalidData, InvalidTransition, UnknownSequence
from sequence.declare.items import Sleep, WaitFor
from sequence.declare.validation import check_data
from sequence.engine import hooks, points, tracing, transitions
from sequence.engine.claims import Claim
from sequence.engine.failure import fail_for_good, undo_start
from sequence.engine.moves import Move, after_move
from sequence.engine.rq.dispatch import dispatch_many
from sequence.engine.rq.wakes import schedule_wake
from sequence.engine.states import ASLEEP, MOVING, TERMINAL, Status
from sequence.models import SequenceEvent, SequenceRecord

logger = logging.getLogger("sequence")

# Rows one wake pass reads at most (the next pass takes the rest).
WAKE_BATCH = 500


def run_item(claim: Claim, cls: type[SequenceDefinition], spec: StepSpec) -> None:
    """Run a claimed Sleep or WaitFor: start its countdown, or its wait."""
    record = claim.record
    item = spec.wait
    now = timezone.now()
    where = f"{spec.name} (item {record.step_index + 1} of {record.name})"
    if isinstance(item, Sleep):
        try:
            wake_at = item.wakes_at(record.data, now, where)
        except InvalidData as exc:
            fail_for_good(claim, cls, str(exc))
            return
        was = transitions.commit_wait(claim, Status.SLEEPING, wake_at, "")
        logger.info("Sequence %s #%s sleeps until %s.", record.name, record.pk, wake_at.isoformat())
        if was == Status.RUNNING:
            _announce(signals.sequence_sleeping, record.pk, wake_at=wake_at)
        if wake_at <= timezone.now():
            wake_due(pk=record.pk)
        elif was == Status.RUNNING:  # paused meanwhile: its resume schedules the wake-up
            schedule_wake(record, record.step_index + 1, record.epoch + 1, wake_at)
        return
    assert isinstance(item, WaitFor)
    timeout = item.timeout_seconds
    deadline = None if timeout is None else now + timedelta(seconds=timeout)
    was = transitions.commit_wait(claim, Status.WAITING, deadline, item.event)
    if deadline is not None and was == Status.RUNNING:
        schedule_wake(record, record.step_index + 1, record.epoch + 1, deadline)
    # An event sent before the wait began is consumed now; one sent while this commit
    # ran is consumed by its sender's own attempt (see send): one of the two sees both.
    if not consume(record.pk) and was == Status.RUNNING:
        logger.info("Sequence %s #%s waits for %r.", record.name, record.pk, item.event)
        _announce(signals.sequence_waiting, record.pk, event=item.event, timeout_at=deadline)


def consume(sequence_id: int) -> bool:
    """If the sequence waits for an event it has received, consume the oldest such
    event and go on; True if it did."""
    with transaction.atomic():
        record = SequenceRecord.objects.filter(pk=sequence_id, status=Status.WAITING).first()
        if record is None:
            return False
        pending = SequenceEvent.objects.filter(
            sequence_id=sequence_id, name=record.waiting_for, consumed_at__isnull=True
        )
        event = pending.order_by("id").first()
        if event is None:
            return False
        data = {**record.data, **event.data}
        try:
            check_data(data, what=f"data after event {event.name!r}")
        except InvalidData as exc:
            logger.error("Sequence %s: event %s cannot be merged: %s", sequence_id, event.pk, exc)
            return False
        taken = pending.filter(pk=event.pk).update(
            consumed_at=Now(), consumed_by=record.step_index - 1
        )
        if not taken or transitions.wake(record, data) is None:
            # Another sender, or the sequence, moved first: leave it all as it was.
            transaction.set_rollback(True)
            return False
        transaction.on_commit(lambda: _moved_on(sequence_id, Status.WAITING), robust=True)
    return True


def send(
    sequence_id: int, event: str, data: Mapping[str, Any] | None = None, *, id: str | None = None
) -> SequenceEvent:
    """Deliver ``event`` to a sequence; its ``WaitFor`` consumes it now or when it gets there.

    With ``id``, a second delivery of the same event id is accepted and ignored (the
    first one's row is returned), even once the sequence has finished. InvalidTransition
    for a finished sequence (an event it has not had), InvalidData
    for an event no WaitFor of its plan waits for, or data that cannot be stored.
    """
    record = SequenceRecord.objects.find(sequence_id)
    if record.status in TERMINAL:
        # A webhook delivered again after its first delivery finished the sequence.
        again = _delivered(record, event, id)
        if again is not None:
            return again
        raise InvalidTransition(
            f"Cannot send {event!r} to {record}: it is {record.status}, and a finished "
            "sequence waits for nothing."
        )
    awaited = awaited_events(record)
    if event not in awaited:
        raise InvalidData(
            f"{record.name} does not wait for {event!r}: no WaitFor of its plan does "
            f"(it waits for {sorted(awaited)!r}). Check the event's name."
        )
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InvalidData(
            f"The data of event {event!r} must be a dict (a JSON object), not "
            f"{type(data).__name__} {data!r:.80}."
        )
    payload = dict(data)
    check_data(payload, what=f"the data of event {event!r}")
    try:
        with transaction.atomic():
            row = SequenceEvent.objects.create(
                sequence_id=record.pk, name=event, event_id=id, data=payload
            )
    except IntegrityError:
        existing = _delivered(record, event, id)
        if existing is None:
            raise
        return existing
    _announce(signals.event_received, record.pk, event=event, data=payload, event_id=id)
    # Now, and once the caller's transaction (if any) commits: the wait may begin between.
    consume(record.pk)
    transaction.on_commit(lambda: consume(record.pk), robust=True)
    return row


def _delivered(record: SequenceRecord, event: str, id: str | None) -> SequenceEvent | None:
    """The event already delivered with this id, if any (a second delivery is ignored)."""
    if id is None:
        return None
    existing = SequenceEvent.objects.filter(sequence_id=record.pk, event_id=id).first()
    if existing is not None:
        logger.info("Sequence %s: event %r with id %r came again; ignored.", record.pk, event, id)
    return existing


def awaited_events(record: SequenceRecord) -> set[str]:
    """The events the WaitFor items of the record's stored plan wait for."""
    try:
        cls = registry.get_sequence_class(record.name)
    except UnknownSequence:
        return set()
    specs = (cls.step_named(name) for name in record.plan)
    return {spec.wait.event for spec in specs if spec and isinstance(spec.wait, WaitFor)}


def wake_due(*, pk: int | None = None, limit: int = WAKE_BATCH) -> int:
    """Wake the sleepers whose time came and time out the waits past their deadline.

    Reads only what is due (the partial index on ``wake_at``); each row moves once
    however many processes wake at the same time. Returns how many moved.
    """
    # On wake_at alone, so that the partial index on it is the one read: what is due.
    due = SequenceRecord.objects.filter(wake_at__isnull=False, wake_at__lte=Now())
    if pk is not None:
        due = due.filter(pk=pk)
    rows = [r for r in due.order_by("wake_at")[:limit] if r.status in ASLEEP]
    sleepers = [r.pk for r in rows if r.status == Status.SLEEPING and r.step_index < len(r.plan)]
    moved = _wake_sleepers(sleepers) if sleepers else 0
    for record in rows:
        if record.pk in sleepers:
            continue
        try:
            moved += _wake(record)
        except Exception:
            logger.exception(
                "Sequence %s: could not wake it; the next pass tries again.", record.pk,
                extra=tracing.log_fields(record.pk, record.name),
            )  # fmt: skip
    return moved


def _wake_sleepers(ids: list[int]) -> int:
    """Wake these sleepers in one statement; queue their next steps in one pipeline."""
    with transaction.atomic():
        changed = transitions.bulk.wake(SequenceRecord.objects.filter(pk__in=ids))
        if changed:
            transaction.on_commit(lambda: _dispatch_woken(changed, ids), robust=True)
    return len(changed)


def _dispatch_woken(changed: list[Any], ids: list[int]) -> None:
    """Queue the woken sleepers' next steps at the head of their queues: their time has
    come, so they go before work queued since (the one due first at the very head)."""
    due_order = {pk: position for position, pk in enumerate(ids)}
    records = [
        SequenceRecord(
            pk=row.id,
            name=row.name,
            status=row.status,
            step_index=row.step_index,
            epoch=row.epoch,
            queue=row.queue,
            plan=row.plan,
        )
        for row in sorted(changed, key=lambda row: due_order[row.id], reverse=True)
    ]
    for record in records:
        points.fire("after_wake", sequence=record.pk, step=record.step_index, epoch=record.epoch)
    dispatch_many(records, at_front=True)


def _wake(record: SequenceRecord) -> int:
    if record.status == Status.WAITING:
        item = _awaited(record)
        if item is None or item.on_timeout == "fail":
            return _time_out(record, item)
    with transaction.atomic():
        if transitions.wake(record) is None:
            return 0
        transaction.on_commit(lambda: _moved_on(record.pk, Status(record.status)), robust=True)
    return 1


def _awaited(record: SequenceRecord) -> WaitFor | None:
    """The WaitFor a waiting sequence is in (the item before its next step)."""
    cls = registry.registered().get(record.name)
    if cls is None or record.step_index < 1:
        return None
    spec = cls.step_named(record.plan[record.step_index - 1])
    return spec.wait if spec is not None and isinstance(spec.wait, WaitFor) else None


def _time_out(record: SequenceRecord, item: WaitFor | None) -> int:
    event = item.event if item is not None else record.waiting_for
    timeout = item.timeout_seconds if item is not None else None
    error = f"WaitFor({event!r}) timed out after {timeout:g}s without the event"
    cls = registry.registered().get(record.name)
    undo_from = None if cls is None else undo_start(record, cls, record.step_index)
    with transaction.atomic():
        status = transitions.time_out(record, error, undo_from)
        if status is None:
            return 0
        transaction.on_commit(lambda: _moved_on(record.pk, Status(record.status)), robust=True)
    logger.error(
        "Sequence %s #%s failed: %s.", record.name, record.pk, error,
        extra=tracing.log_fields(record.pk, record.name),
    )  # fmt: skip
    return 1


def _moved_on(sequence_id: int, found: Status) -> None:
    """After a wake-up or a timeout committed: queue what is due, or announce the end."""
    record = SequenceRecord.objects.get(pk=sequence_id)
    if record.status in MOVING:
        points.fire("after_wake", sequence=record.pk, step=record.step_index, epoch=record.epoch)
    after_move(record, Move(found, Status(record.status)))


def _announce(signal: Any, sequence_id: int, **kwargs: Any) -> None:
    """Send ``signal`` once the change commits (now, outside a transaction)."""

    def send_it() -> None:
        record = SequenceRecord.objects.get(pk=sequence_id)
        cls = registry.registered().get(record.name)
        if cls is not None:
            hooks.send(signal, cls, sequence=cls._bind(record), **kwargs)

    transaction.on_commit(send_it, robust=True)
