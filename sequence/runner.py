"""The RQ entry point: claim a step, run it, commit its result, queue the next.

A job carries only ``(sequence id, step index, epoch)``. The row is the truth: a job
whose step or epoch no longer matches the row is stale and ends quietly, so RQ may
deliver a job any number of times and a step is still recorded once.

A step costs three statements: the claim, the commit and the attempt's history row (in
the commit's transaction; on PostgreSQL one statement with the commit). The next job is
queued after the commit; its outbox entry is cleared by that job's claim, or by the
sweep once it sees the job in RQ.

This module decides what happens when; the statements are the state machine's
(``sequence.engine.transitions``), failure is ``sequence.engine.failure``'s.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from sequence import signals
from sequence.declare.conf import settings
from sequence.declare.definitions import SequenceDefinition, StepSpec
from sequence.declare.exceptions import (
    InvalidData,
    StepDeadlineExceeded,
    StepFenced,
    UnknownSequence,
)
from sequence.declare.registry import get_sequence_class
from sequence.declare.validation import check_data
from sequence.engine import foreach, hooks, points, release, tracing, transitions, waiting
from sequence.engine.claims import Claim, Execution, Taker, execution, job_timeout
from sequence.engine.failure import fail_for_good, record_failure, run_undo
from sequence.engine.inline import Inline, MayInline, policy
from sequence.engine.moves import Move, after_move
from sequence.engine.rq import registries
from sequence.engine.rq.dispatch import (
    ITEM,
    STEP,
    UNDO,
    WAKE,
    Work,
    dispatch,
    enqueue_retry,
    retry_of,
    timeout_of,
)
from sequence.engine.states import Status

logger = logging.getLogger("sequence")


def run_step(
    sequence_id: int, step_index: int, epoch: int, kind: str = STEP, item: int | None = None
) -> None:
    """Run a unit of a sequence, if the job is still the one the row expects: step
    ``step_index`` (``kind="item"``: element ``item`` of its ForEach; ``kind="undo"``: the
    compensation of the step, or of that element; ``kind="wake"``: its wake-up, if due)."""
    if kind == WAKE:
        # What the row says is due, whatever the job's step and epoch: a wake-up delivered
        # early, twice, or after the sequence moved on does nothing.
        waiting.wake_due(pk=sequence_id)
        return
    from rq import get_current_job

    entered = time.monotonic()
    job = get_current_job()
    context = execution.get()
    work = Work(sequence=sequence_id, index=step_index, epoch=epoch, kind=kind, element=item)
    taker, retries_left = _who(job, context, entered)
    if kind in (UNDO, ITEM):
        run = _run_undo if kind == UNDO else _run_item
        try:
            run(work, taker, retries_left)
        except Exception as exc:
            if getattr(exc, "final", False) and job is not None:
                job.retries_left = 0  # failed for good before RQ's retries ran out
            raise
        return
    claim = _claim(work, taker, job)
    if claim is None:
        return
    timeout = taker.timeout
    if timeout > 0 and job is not None and job.started_at is not None:
        claim.wall_deadline = job.started_at.timestamp() + timeout
    inline = context.inline if context is not None else None
    may_inline = policy(inline, job, timeout, entered)
    try:
        follow = _run_guarded(claim, retries_left, may_inline)
    except Exception:
        if claim.final and job is not None:
            job.retries_left = 0  # Fail, or an error its Retry.on leaves out: RQ stops here
        raise
    while follow is not None and inline is not None:
        follow = _run_inline(follow, taker, inline, may_inline)


def _who(job: Any, context: Execution | None, entered: float) -> tuple[Taker, int]:
    """Who runs the job (worker, claim token, the job's timeout), and the retries RQ has
    left."""
    worker = (
        (context and context.worker)
        or (job and job.worker_name)
        or f"{socket.gethostname()}:{os.getpid()}"
    )
    token = (context and context.token) or uuid.uuid4().hex
    if job is not None:
        retries_left = job.retries_left or 0
    else:
        retries_left = context.retries_left if context is not None else 0
    # The job was queued with the step's timeout: the lease must outlast it.
    timeout = int((job and job.timeout) or settings.TIMEOUT)
    return Taker(worker=worker, token=token, timeout=timeout, entered=entered), retries_left


def _claim(work: Work, taker: Taker, job: Any) -> Claim | None:
    """Claim the step, or end a stale job (queueing a successor whose dispatch was lost)."""
    try:
        claim = transitions.claim(work, taker)
    except (OperationalError, InterfaceError):
        # The step did not start: RQ's retry of this job must not count as an attempt.
        if job is not None and job.retries_left:
            job.retries_left += 1
        connection.close()
        raise
    if claim is not None:
        return claim
    record = release.current(work.sequence)
    if (
        record is not None
        and (record.status, record.step_index, record.epoch)
        == (Status.FAILED, work.index, work.epoch)
        and job is not None
        and registries.requeued_by_hand(job)
    ):
        claim = transitions.claim(work, taker, failed=True)
    if claim is None:
        release.stale(record, work.sequence, work.index, work.epoch)
    return claim


def _run_undo(work: Work, taker: Taker, retries_left: int) -> None:
    claim = transitions.claim_undo(work, taker)
    if claim is None:
        logger.info(
            "Sequence %s: the compensation of step %s under epoch %s is stale; job ends.",
            work.sequence, work.index, work.epoch, extra=tracing.log_fields(work.sequence),
        )  # fmt: skip
        return
    with tracing.attempt(claim.record, work.index, claim.record.attempt, UNDO, work.element):
        try:
            run_undo(claim, retries_left)
        except Exception:
            if not claim.settled:
                release.release_or_remember(claim)
            raise


def _run_item(work: Work, taker: Taker, retries_left: int) -> None:
    """Run an element of the ForEach at ``work.index`` (a failure re-raised, marked final
    when RQ must not retry it)."""
    ic = transitions.elements.claim_item(work, taker)
    if ic is None:
        logger.info(
            "Sequence %s: element %s of step %s under epoch %s is not due; job ends.",
            work.sequence, work.element, work.index, work.epoch,
            extra=tracing.log_fields(work.sequence, element=work.element),
        )  # fmt: skip
        return
    with tracing.attempt(ic.record, work.index, ic.attempt, ITEM, ic.index):
        try:
            foreach.run_item(ic, retries_left)
        except Exception as exc:
            exc.final = ic.final  # type: ignore[attr-defined]
            raise


def _run_guarded(claim: Claim, retries_left: int, may_inline: MayInline) -> Follow | None:
    record = claim.record
    with tracing.attempt(record, record.step_index, record.attempt, STEP):
        try:
            return _run_claimed(claim, retries_left, may_inline)
        except Exception:
            # Whatever went wrong (the database went away while the failure was being
            # recorded, say), the claim must not stay held by a live worker.
            if not claim.settled:
                release.release_or_remember(claim)
            raise


# The next step, due and not queued, that this job runs itself: the unit, the sequence's
# queue, the step.
Follow = tuple[Work, str, StepSpec]


def _run_inline(
    follow: Follow, taker: Taker, inline: Inline, may_inline: MayInline
) -> Follow | None:
    """Run a due step in this job, as its own job would: claim, run, commit.

    Its failure does not reach RQ (the job it would fail is the previous step's): it is
    recorded as any other, and its retries are queued as the job RQ would have left.
    """
    work, queue, spec = follow
    timeout = timeout_of(spec)
    job_timeout.fired = False
    inline.rearm(timeout)
    taker = Taker(worker=taker.worker, token=taker.token, timeout=timeout, entered=time.monotonic())
    try:
        claim = transitions.claim(work, taker)
    except Exception:
        logger.exception(
            "Sequence %s: could not claim step %s inline; queueing it.", work.sequence, work.index,
            extra=tracing.log_fields(work.sequence, step=spec.name),
        )  # fmt: skip
        dispatch(work, queue, spec, confirm=False)
        return None
    if claim is None:
        return None  # paused, canceled or taken meanwhile: nothing of ours is due
    claim.wall_deadline = time.time() + timeout
    try:
        return _run_guarded(claim, retry_of(spec).max, may_inline)
    except Exception:
        r = claim.record
        logger.warning(
            "Sequence %s step %s failed inline%s.", work.sequence, work.index,
            "; its retry is queued" if claim.retrying else "", exc_info=True,
            extra=tracing.log_fields(r.pk, r.name, r.plan[work.index], r.attempt),
        )  # fmt: skip
        if claim.retrying:
            enqueue_retry(work.sequence, work.index, work.epoch, queue, spec)
        return None


def _run_claimed(claim: Claim, retries_left: int, may_inline: MayInline) -> Follow | None:
    record = claim.record
    step_index = record.step_index
    try:
        spec_cls = get_sequence_class(record.name)
    except UnknownSequence as exc:
        fail_for_good(claim, None, str(exc))
        return None
    spec = spec_cls.step_named(record.plan[step_index])
    if spec is None:
        fail_for_good(
            claim,
            spec_cls,
            f"Step {record.plan[step_index]!r} of {record.name} (version {record.version!r}) "
            "no longer exists; restore it, or move the sequence onto the current plan with "
            "retry(from_step=...) (manage.py sequence retry ID --from-step NAME).",
        )
        return None
    points.fire("after_claim", **claim.context())
    if spec.wait is not None:
        waiting.run_item(claim, spec_cls, spec)
        return None
    if spec.each is not None:
        foreach.begin(claim, spec_cls, spec)
        return None
    handle = spec_cls._bind(record)
    try:
        if spec.cls.atomic:
            with transaction.atomic():
                data = _perform(spec, claim, handle)
                points.fire("before_commit", **claim.context())
                move = transitions.commit(claim, data)
            points.fire("commit_ack", **claim.context())
        else:
            data = _perform(spec, claim, handle)
            points.fire("before_commit", **claim.context())
            move = transitions.commit_result(claim, data)
    except StepFenced as exc:
        logger.warning("Sequence %s stopped: %s", record.step_label(step_index), exc)
        tracing.failed(f"{type(exc).__name__}: {exc}")
        release.release(claim, f"{type(exc).__name__}: {exc}")
        return None
    except Exception as exc:
        if isinstance(exc, DatabaseError) and not connection.in_atomic_block:
            # A lost connection: record the failure on a fresh one.
            connection.close()
        if record_failure(claim, spec_cls, spec, exc, retries_left):
            raise
        return None
    points.fire("after_commit", **claim.context())
    return _after_commit(claim, spec_cls, spec, move, data, may_inline)


def _perform(spec: StepSpec, claim: Claim, handle: SequenceDefinition) -> dict[str, Any]:
    record = claim.record
    if spec.values:
        record.data.update(spec.values)  # this use's static values, merged as it runs
    step = spec.cls(
        data=record.data,
        sequence=handle,
        attempt=record.attempt,
        idempotency_key=f"{record.pk}:{record.step_index}:{spec.name}",
        heartbeat=lambda: transitions.heartbeat(claim),
    )
    result = step.perform()
    if result is not None:
        if not isinstance(result, Mapping):
            raise InvalidData(
                f"Step {spec.name!r} returned {type(result).__name__} {result!r:.80}; "
                "return a dict to merge into the data, or None."
            )
        step.data.update(result)
    check_data(step.data, what=f"data after step {spec.name!r}")
    _check_deadline(claim, spec.name)
    return step.data


def _check_deadline(claim: Claim, name: str) -> None:
    # RQ's timeout raises inside the step; a step that swallowed it lands here.
    if job_timeout.fired or time.monotonic() > claim.deadline or time.time() >= claim.wall_deadline:
        raise StepDeadlineExceeded(
            f"Step {name!r} ran past its timeout of {claim.timeout}s; its result is not "
            "committed. Raise the step's timeout or make it faster."
        )


def _after_commit(
    claim: Claim,
    cls: type[SequenceDefinition],
    spec: StepSpec,
    move: Move,
    data: dict[str, Any],
    may_inline: MayInline,
) -> Follow | None:
    """Queue the next step (or hand it back to run here), then hooks and signals."""
    record = claim.record
    next_index = record.step_index + 1
    follow: Follow | None = None
    due = move.now == Status.PENDING
    # None for a step a deploy removed: its job fails the sequence, naming it.
    next_spec = cls.step_named(record.plan[next_index]) if due else None
    if due:
        work = Work(sequence=record.pk, index=next_index, epoch=record.epoch + 1)
        if next_spec is not None and may_inline(next_spec, record.queue):
            # Not queued: this job claims it next; the outbox entry covers a crash meanwhile.
            follow = (work, record.queue, next_spec)
        else:
            # Unconfirmed: the next claim clears the outbox entry (one write less per step).
            dispatch(work, record.queue, next_spec, confirm=False)
            points.fire(
                "after_dispatch",
                **claim.context(step=next_index, epoch=record.epoch + 1),
                queue=record.queue, spec=next_spec,
            )  # fmt: skip
    took = timezone.now() - claim.started_at
    if move.now == Status.COMPLETED:
        then = "the sequence is completed"
    elif move.now != Status.PENDING:
        then = f"the sequence is {move.now}, so nothing further starts"
    else:
        then = f"next: step {record.plan[next_index]}"
    logger.info(
        "Sequence %s succeeded in %.2fs; %s.", record.step_label(), took.total_seconds(), then
    )
    record.data = data
    record.step_index = next_index
    record.status = move.now
    handle = cls._bind(record)
    hooks.send(
        signals.step_completed, cls, sequence=handle,
        step=spec.name, step_index=next_index - 1, attempt=record.attempt,
    )  # fmt: skip
    after_move(record, move, cls, queue=False)
    return follow
