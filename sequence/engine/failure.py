"""Failure and compensation: a failed attempt recorded, a sequence failed for good, and
its completed steps undone, last first, each compensation a unit of work of its own.

A sequence that fails for good with completed steps that define ``compensate()`` is
``compensating``: one compensation job at a time walks back through them (claimed,
fenced and recorded like a step, retried with the step's ``Retry``, recovered by the
sweep). When the walk ends the sequence is failed (or canceled, when a cancel asked for
the compensations), and ``on_failure`` and the signal follow, once.
"""

from __future__ import annotations

import logging
import traceback

from django.db import transaction

from sequence import signals
from sequence.declare.definitions import SequenceDefinition, StepSpec
from sequence.declare.exceptions import Fail, UnknownSequence
from sequence.declare.masking import mask_text
from sequence.declare.registry import get_sequence_class
from sequence.engine import hooks, tracing, transitions
from sequence.engine.claims import Claim
from sequence.engine.moves import Move, after_move
from sequence.engine.rq.dispatch import UNDO, Work, dispatch, retry_of
from sequence.engine.states import ITEM_TRANSITIONS, Outcome, Status, sources
from sequence.models import Position, SequenceItem, SequenceRecord

logger = logging.getLogger("sequence")


def undo_start(
    record: SequenceRecord, cls: type[SequenceDefinition], before: int
) -> Position | None:
    """Where a compensation walk of what completed before plan index ``before`` starts."""
    return _walk_back(record, cls, before)


def undo_after(
    record: SequenceRecord, cls: type[SequenceDefinition], index: int, item: int | None
) -> Position | None:
    """Where the walk goes after the compensation at ``(index, item)``."""
    if item is not None:
        earlier = _last_done(record.pk, index, below=item)
        if earlier is not None:
            return index, earlier
    return _walk_back(record, cls, index)


def _walk_back(
    record: SequenceRecord, cls: type[SequenceDefinition], before: int
) -> Position | None:
    index: int | None = before
    while index is not None and (index := cls.last_undo(record.plan, index)) is not None:
        spec = cls.step_named(record.plan[index])
        if spec is None or spec.each is None:
            return index, None
        element = _last_done(record.pk, index)  # a ForEach: its elements that succeeded
        if element is not None:
            return index, element
    return None


def _last_done(sequence_id: int, step_index: int, below: int | None = None) -> int | None:
    done = SequenceItem.objects.filter(
        sequence_id=sequence_id,
        step_index=step_index,
        status__in=sources("compensate", of=ITEM_TRANSITIONS),
    )
    if below is not None:
        done = done.filter(index__lt=below)
    return done.order_by("-index").values_list("index", flat=True).first()


def final_because(exc: BaseException, spec: StepSpec | None, retries_left: int) -> str | None:
    """Why this failed attempt is the last (for the worker's log), or None to retry it."""
    if isinstance(exc, Fail):
        return "it raised Fail, which is never retried"
    if not retry_of(spec).retries(exc):
        return f"{type(exc).__name__} is not one of the errors its Retry(on=...) retries"
    if retries_left <= 0:
        return "it has no retries left"
    return None


def _error(exc: BaseException, data: dict[str, object]) -> tuple[str, str]:
    message = str(exc) if isinstance(exc, Fail) else f"{type(exc).__name__}: {exc}"
    return mask_text(message, data), mask_text(traceback.format_exc(), data)


def record_failure(
    claim: Claim, cls: type[SequenceDefinition], spec: StepSpec, exc: Exception, retries_left: int
) -> bool:
    """Record a failed attempt; True if RQ should see the exception.

    A last attempt (no retries left, ``Fail``, or an error ``Retry.on`` does not cover)
    fails the sequence, compensating first if a completed step has an undo; the claim's
    ``final`` tells the runner to stop RQ's own retries.
    """
    record = claim.record
    error, tb = _error(exc, record.data)
    tracing.failed(error)
    reason = final_because(exc, spec, retries_left)
    claim.final = reason is not None
    undo_from = None if reason is None else undo_start(record, cls, record.step_index)
    # Failed for good, the sequence's error names the step (Fail's message is the error).
    summary = error if reason is None or isinstance(exc, Fail) else f"{spec.base} failed: {error}"
    with transaction.atomic():
        status = transitions.fail(
            claim, error, tb, will_retry=reason is None, undo_from=undo_from, summary=summary
        )
        if status == Status.COMPENSATING:
            transaction.on_commit(lambda: _dispatch_undo(record, undo_from), robust=True)
    name = record.step_label()
    if status is None:
        logger.warning("Sequence %s failed after losing its claim: %s", name, error)
        return False
    if reason is None:
        logger.warning("Sequence %s failed: %s; RQ retries it.", name, error)
    else:
        logger.error("Sequence %s failed for good, as %s: %s", name, reason, error)
    fresh = SequenceRecord.objects.get(pk=record.pk) if reason is not None else record
    fresh.error = summary
    handle = cls._bind(fresh)
    hooks.send(
        signals.step_failed, cls, sequence=handle, step=spec.name,
        step_index=record.step_index, attempt=record.attempt, error=error,
        will_retry=status == Status.RETRYING,
    )  # fmt: skip
    # Compensating: its first undo is queued on commit, above; RQ retries a retrying one.
    after_move(fresh, Move.of_claim(status), cls, queue=False)
    return True


def fail_for_good(claim: Claim, cls: type[SequenceDefinition] | None, error: str) -> None:
    """Fail the sequence at once, without retries: its plan cannot run here."""
    record = claim.record
    logger.error("Sequence %s failed for good: %s", record.step_label(), error)
    tracing.failed(error)
    undo_from = None if cls is None else undo_start(record, cls, record.step_index)
    with transaction.atomic():
        status = transitions.fail(claim, error, will_retry=False, undo_from=undo_from)
        if status == Status.COMPENSATING:
            transaction.on_commit(lambda: _dispatch_undo(record, undo_from), robust=True)
    if cls is None or status not in (Status.FAILED, Status.COMPENSATING):
        return
    fresh = SequenceRecord.objects.get(pk=record.pk)
    hooks.send(
        signals.step_failed, cls, sequence=cls._bind(fresh), step=record.plan[record.step_index],
        step_index=record.step_index, attempt=record.attempt, error=error, will_retry=False,
    )  # fmt: skip
    fresh.error = error
    after_move(fresh, Move.of_claim(status), cls, queue=False)


def _dispatch_undo(record: SequenceRecord, at: Position | None) -> None:
    """Queue the first compensation of a walk that just began."""
    if at is None:
        return
    cls = get_sequence_class(record.name)
    spec = cls.step_named(record.plan[at[0]])
    work = Work(sequence=record.pk, index=at[0], epoch=record.epoch, kind=UNDO, element=at[1])
    dispatch(work, record.queue, spec)


def after_walk(record: SequenceRecord) -> None:
    """A compensation ended: queue the next one, or announce how the sequence ended."""
    after_move(record, Move(Status.COMPENSATING, Status(record.status)))


def run_undo(claim: Claim, retries_left: int) -> None:
    """Run the claimed compensation; record it, and walk on (or raise for RQ's retry).

    It sees the data as last committed. A compensation that fails for good is recorded,
    named in the sequence's error, and the walk goes on.
    """
    record = claim.record
    index = claim.index
    try:
        cls = get_sequence_class(record.name)
    except UnknownSequence as exc:
        _walked(claim, None, str(exc), "")
        return
    spec = cls.step_named(record.plan[index])
    undo_next = undo_after(record, cls, index, claim.undo_item)
    if spec is None or not spec.compensates:
        error = f"step {record.plan[index]!r} no longer exists or has no compensate()"
        _walked(claim, undo_next, error, "")
        return
    item, key = None, f"{record.pk}:{index}:{spec.name}"
    if spec.each is not None and claim.undo_item is not None:
        item = record.data.get(spec.each.key, [None] * (claim.undo_item + 1))[claim.undo_item]
        key = f"{record.pk}:{index}:{spec.each.step.__name__}[{claim.undo_item}]"
    step = spec.cls(
        data={**record.data, **spec.values}, sequence=cls._bind(record), attempt=record.attempt,
        idempotency_key=key, heartbeat=lambda: transitions.heartbeat(claim),
        item=item, index=claim.undo_item,
    )  # fmt: skip
    try:
        step.compensate()  # type: ignore[attr-defined]
    except Exception as exc:
        error, tb = _error(exc, record.data)
        reason = final_because(exc, spec, retries_left)
        name = f"{record.name} #{record.pk}: the compensation of {spec.name} (attempt {record.attempt})"
        if reason is None:
            logger.warning("Sequence %s failed: %s; RQ retries it.", name, error)
            tracing.failed(error, Outcome.COMPENSATION_FAILED)
            if transitions.undo_failed(claim, error, tb):
                raise
            return
        logger.error("Sequence %s failed for good, as %s: %s", name, reason, error)
        _walked(
            claim, undo_next, error, tb, note=f"; the compensation of {spec.name} failed: {error}"
        )
        return
    _walked(claim, undo_next, "", "")


def _walked(claim: Claim, undo_next: Position | None, error: str, tb: str, note: str = "") -> None:
    if error:
        tracing.failed(error, Outcome.COMPENSATION_FAILED)
    if not note and error:
        note = f"; the compensation of step {claim.index} failed: {error}"
    with transaction.atomic():
        status = transitions.undo_done(claim, undo_next, error, tb, note)
    if status is None:
        return
    after_walk(SequenceRecord.objects.get(pk=claim.record.pk))
