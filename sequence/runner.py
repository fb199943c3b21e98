"""The RQ entry point: claim a step, run it, commit its result, queue the next.

A job carries only ``(sequence id, step index, epoch)``. The row is the truth: a job
whose step or epoch no longer matches the row is stale and ends quietly, so RQ may
deliver a job any number of times and a step is still recorded once.

A step costs three statements: the claim, the commit and the attempt's history row (in
the commit's transaction; on PostgreSQL one statement with the commit). The next job is
queued after the commit; its outbox entry is cleared by that job's claim, or by the
sweep once it sees the job in RQ.

This module decides what happens when; the statements themselves (the claim, the
heartbeat, the commit, the history row, the release) are in ``sequence.claims``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence import claims, hooks, signals
from sequence.claims import RELEASED, Claim

# Kept importable from here: sequence.testing arms test_points, sequence.worker
# releases the orphans.
from sequence.claims import orphans as orphans
from sequence.claims import release_orphans as release_orphans
from sequence.claims import test_points as test_points
from sequence.conf import settings
from sequence.definitions import Sequence, StepSpec, find_step, get_sequence_class
from sequence.dispatch import dispatch, enqueue_retry, retry_of, timeout_of
from sequence.exceptions import InvalidData, StepDeadlineExceeded, StepFenced, UnknownSequence
from sequence.masking import mask_text
from sequence.models import SequenceRecord, StepAttempt
from sequence.states import Outcome, Status
from sequence.validation import check_data

logger = logging.getLogger("sequence")


@dataclass(frozen=True)
class Execution:
    """Who runs the job in this context: the worker's name and the claim token to use.

    Set by sequence's worker classes (the token is RQ's execution id, which the worker
    process also knows, so it can release the claim of a work-horse that died).
    """

    worker: str
    token: str | None = None
    # Lent by SequenceWorker: what lets the runner run the next steps in the same job.
    inline: Inline | None = None


@dataclass(frozen=True)
class Inline:
    """How a worker lets a job run the next steps of its sequence (``INLINE_STEPS``)."""

    rearm: Callable[[int], object]  # restart RQ's job timeout for the next step
    stopping: Callable[[], bool]  # the worker was asked to stop


execution: ContextVar[Execution | None] = ContextVar("sequence_execution", default=None)


class _Timeout:
    """Set by sequence's worker classes when RQ's job timeout fires in this process."""

    fired = False


job_timeout = _Timeout()


def spec_for(name: str, plan: list[str], index: int) -> StepSpec | None:
    """The current definition of step ``index`` of a stored plan, if it still exists."""
    return find_step(name, plan[index] if index < len(plan) else None)


def run_step(sequence_id: int, step_index: int, epoch: int) -> None:
    """Run step ``step_index`` of a sequence, if the job is still the one the row expects."""
    from rq import get_current_job

    entered = time.monotonic()
    job = get_current_job()
    context = execution.get()
    worker = (
        (context and context.worker)
        or (job and job.worker_name)
        or f"{socket.gethostname()}:{os.getpid()}"
    )
    token = (context and context.token) or uuid.uuid4().hex
    retries_left = (job.retries_left or 0) if job is not None else 0
    # The job was queued with the step's timeout: the lease must outlast it.
    timeout = int((job and job.timeout) or settings.TIMEOUT)

    try:
        claim = claims.take(sequence_id, step_index, epoch, worker, token, timeout, entered)
    except (OperationalError, InterfaceError):
        # The step did not start: RQ's retry of this job must not count as an attempt.
        if job is not None and job.retries_left:
            job.retries_left += 1
        connection.close()
        raise
    if claim is None:
        record = _current(sequence_id)
        if (
            record is not None
            and (record.status, record.step_index, record.epoch)
            == (Status.FAILED, step_index, epoch)
            and job is not None
            and claims.requeued_by_hand(job)
        ):
            claim = claims.take(
                sequence_id, step_index, epoch, worker, token, timeout, entered, failed=True
            )
        if claim is None:
            _stale(record, sequence_id, step_index, epoch)
            return
    if timeout > 0 and job is not None and job.started_at is not None:
        claim.wall_deadline = job.started_at.timestamp() + timeout
    inline = context.inline if context is not None else None
    may_inline = _inline_policy(inline, job, timeout, entered)
    follow = _run_guarded(claim, retries_left, may_inline)
    while follow is not None and inline is not None:
        follow = _run_inline(follow, worker, token, inline, may_inline)


def _run_guarded(claim: Claim, retries_left: int, may_inline: MayInline) -> Follow | None:
    try:
        return _run_claimed(claim, retries_left, may_inline)
    except Exception:
        # Whatever went wrong (the database went away while the failure was being
        # recorded, say), the claim must not stay held by a live worker.
        if not claim.settled:
            claims.release_or_remember(claim)
        raise


# The next step, due and not queued, that this job runs itself:
# (sequence id, step index, epoch, the sequence's queue, the step).
Follow = tuple[int, int, int, str, StepSpec]
MayInline = Callable[[StepSpec, str], bool]  # (the step, its sequence's queue)


def _inline_policy(inline: Inline | None, job: Any, timeout: int, entered: float) -> MayInline:
    """Whether the job may run a due step itself rather than queue it (``INLINE_STEPS``).

    Only in a worker that lends the means (``SequenceWorker``), for steps of the job's
    own queue whose timeout fits the job's (RQ's registries count on it) and that have
    retries (the last attempt is always an RQ job's), while the worker is not stopping,
    up to INLINE_STEPS steps and INLINE_SECONDS into the job.
    """
    limit = settings.INLINE_STEPS
    if not limit or inline is None or job is None:
        return lambda spec, queue: False
    used = [0]

    def may(spec: StepSpec, queue: str) -> bool:
        if (
            used[0] >= limit
            or time.monotonic() - entered >= settings.INLINE_SECONDS
            or (spec.cls.queue or queue) != job.origin
            or timeout_of(spec) > timeout
            # Its one attempt would fail for good outside an RQ job of its own, leaving
            # nothing in RQ's failed registry to requeue.
            or retry_of(spec).max == 0
            or inline.stopping()
        ):
            return False
        used[0] += 1
        return True

    return may


def _run_inline(
    follow: Follow, worker: str, token: str, inline: Inline, may_inline: MayInline
) -> Follow | None:
    """Run a due step in this job, as its own job would: claim, run, commit.

    Its failure does not reach RQ (the job it would fail is the previous step's): it is
    recorded as any other, and its retries are queued as the job RQ would have left.
    """
    sequence_id, index, epoch, queue, spec = follow
    timeout = timeout_of(spec)
    job_timeout.fired = False
    inline.rearm(timeout)
    entered = time.monotonic()
    try:
        claim = claims.take(sequence_id, index, epoch, worker, token, timeout, entered)
    except Exception:
        logger.exception("Sequence %s: could not claim step %s inline; queueing it.", *follow[:2])
        dispatch(sequence_id, index, epoch, queue, spec, confirm=False)
        return None
    if claim is None:
        return None  # paused, canceled or taken meanwhile: nothing of ours is due
    claim.wall_deadline = time.time() + timeout
    try:
        return _run_guarded(claim, retry_of(spec).max, may_inline)
    except Exception:
        logger.warning(
            "Sequence %s step %s failed inline%s.", sequence_id, index,
            "; its retry is queued" if claim.retrying else "", exc_info=True,
        )  # fmt: skip
        if claim.retrying:
            enqueue_retry(sequence_id, index, epoch, queue, spec)
        return None


def _run_claimed(claim: Claim, retries_left: int, may_inline: MayInline) -> Follow | None:
    record = claim.record
    step_index = record.step_index
    try:
        spec_cls = get_sequence_class(record.name)
    except UnknownSequence as exc:
        _fail_for_good(claim, None, str(exc))
        return None
    spec = spec_cls.step_named(record.plan[step_index])
    if spec is None:
        _fail_for_good(
            claim,
            spec_cls,
            f"Step {record.plan[step_index]!r} of {record.name} (version {record.version!r}) "
            "no longer exists; restore it or retry with a plan that has it.",
        )
        return None
    handle = spec_cls._from_record(record)
    claims.point("after_claim", claim)
    try:
        if spec.cls.atomic:
            with transaction.atomic():
                data = _perform(spec, claim, handle)
                claims.point("before_commit", claim)
                moved = claims.commit(claim, data)
            claims.point("commit_ack", claim)
        else:
            data = _perform(spec, claim, handle)
            claims.point("before_commit", claim)
            moved = claims.commit_result(claim, data)
    except StepFenced as exc:
        logger.warning("Sequence %s step %s: %s", record.pk, step_index, exc)
        claims.release(claim, f"{type(exc).__name__}: {exc}")
        return None
    except Exception as exc:
        if isinstance(exc, DatabaseError) and not connection.in_atomic_block:
            # A lost connection: record the failure on a fresh one.
            connection.close()
        if _record_failure(claim, spec_cls, spec, exc, will_retry=retries_left > 0):
            raise
        return None
    claims.point("after_commit", claim)
    return _after_commit(claim, spec_cls, spec, moved, data, may_inline)


def _current(sequence_id: int) -> SequenceRecord | None:
    """The row as it is now, with whether its outbox entry is overdue."""
    from sequence.recovery import overdue

    return (
        SequenceRecord.objects.filter(pk=sequence_id)
        .annotate(overdue=overdue(settings.DISPATCH_GRACE))
        .first()
    )


def _stale(record: SequenceRecord | None, sequence_id: int, step_index: int, epoch: int) -> None:
    """A job the row no longer expects: queue a successor whose dispatch was lost, then end.

    Only an overdue outbox entry whose job RQ no longer holds is queued again here (the
    sweep would do the same later); anything else would just add a duplicate.
    """
    from sequence.recovery import LiveJobs

    if record is None:
        logger.warning("Sequence %s no longer exists; its step job ends.", sequence_id)
        return
    logger.info(
        "Sequence %s step %s epoch %s is stale (row: %s, step %s, epoch %s); job ends.",
        sequence_id, step_index, epoch, record.status, record.step_index, record.epoch,
    )  # fmt: skip
    if (
        getattr(record, "overdue", False)
        and record.status in (Status.PENDING, Status.RETRYING)
        and record.epoch > epoch
        and record.pk not in LiveJobs().live([record])
    ):
        dispatch(
            record.pk, record.step_index, record.epoch, record.queue,
            spec_for(record.name, record.plan, record.step_index),
        )  # fmt: skip


def _perform(spec: StepSpec, claim: Claim, handle: Sequence) -> dict[str, Any]:
    record = claim.record
    step = spec.cls(
        data=record.data,
        sequence=handle,
        attempt=record.attempt,
        idempotency_key=f"{record.pk}:{record.step_index}:{spec.name}",
        heartbeat=lambda: claims.heartbeat(claim),
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
    cls: type[Sequence],
    spec: StepSpec,
    was: str,
    data: dict[str, Any],
    may_inline: MayInline,
) -> Follow | None:
    """Queue the next step (or hand it back to run here), then hooks and signals."""
    record = claim.record
    next_index = record.step_index + 1
    last = next_index >= len(record.plan)
    follow: Follow | None = None
    next_spec = None if last else cls.step_named(record.plan[next_index])
    if was == Status.RUNNING and next_spec is not None and may_inline(next_spec, record.queue):
        # Not queued: this job claims it next; the outbox entry covers a crash meanwhile.
        follow = (record.pk, next_index, record.epoch + 1, record.queue, next_spec)
    elif was == Status.RUNNING and not last:
        # Unconfirmed: the next claim clears the outbox entry (one write less per step).
        dispatch(record.pk, next_index, record.epoch + 1, record.queue, next_spec, confirm=False)
        claims.point(
            "after_dispatch", claim, step=next_index, epoch=record.epoch + 1,
            queue=record.queue, spec=next_spec,
        )  # fmt: skip
    record.data = data
    record.step_index = next_index
    record.status = Status.COMPLETED if last else Status.PENDING
    handle = cls._from_record(record)
    hooks.send(
        signals.step_completed, cls, sequence=handle,
        step=spec.name, step_index=next_index - 1, attempt=record.attempt,
    )  # fmt: skip
    if last and was in (Status.RUNNING, Status.PAUSED):
        hooks.call(handle.on_complete)
        hooks.send(signals.sequence_completed, cls, sequence=handle)
    return follow


def _record_failure(
    claim: Claim, cls: type[Sequence], spec: StepSpec, exc: Exception, *, will_retry: bool
) -> bool:
    """Record a failed attempt; True if RQ should see the exception (and maybe retry)."""
    error = mask_text(f"{type(exc).__name__}: {exc}", claim.record.data)
    tb = mask_text(traceback.format_exc(), claim.record.data)
    fields = {**RELEASED, "error": error}
    with transaction.atomic():
        failed = False
        if will_retry:
            changed = claim.retrying = bool(
                claim.mine()
                .filter(status=Status.RUNNING)
                .update(status=Status.RETRYING, updated_at=Now(), **fields)
            )
        else:
            changed = failed = bool(
                claim.mine()
                .filter(status__in=[Status.RUNNING, Status.PAUSED])
                .update(status=Status.FAILED, finished_at=Now(), updated_at=Now(), **fields)
            )
        # Paused or canceled meanwhile: keep that status, but release the claim.
        changed = changed or claim.mine().update(updated_at=Now(), **fields)
        if not changed:
            logger.warning(
                "Sequence %s step %s failed after losing its claim: %s",
                claim.record.pk, claim.record.step_index, error,
            )  # fmt: skip
            claim.settled = True
            return False
        claims.record_attempt(claim, Outcome.FAILED, error, tb)
    claim.settled = True
    record = claim.record
    record.error = error
    record.status = Status.FAILED if failed else Status.RETRYING
    handle = cls._from_record(record)
    hooks.send(
        signals.step_failed, cls, sequence=handle, step=spec.name,
        step_index=record.step_index, attempt=record.attempt, error=error, will_retry=will_retry,
    )  # fmt: skip
    if failed:
        announce_failure(record, cls, handle, error, claim.worker)
    return True


def _fail_for_good(claim: Claim, cls: type[Sequence] | None, error: str) -> None:
    """Fail the sequence at once, without retries: its plan cannot run here."""
    logger.error("Sequence %s: %s", claim.record.pk, error)
    with transaction.atomic():
        # A sequence canceled since the claim stays canceled; it only gives the claim back.
        failable = claim.mine().filter(status__in=[Status.RUNNING, Status.PAUSED])
        if not failable.update(
            status=Status.FAILED, error=error, finished_at=Now(), updated_at=Now(), **RELEASED
        ):
            claim.mine().update(updated_at=Now(), **RELEASED)
            claim.settled = True
            return
        claims.record_attempt(claim, Outcome.FAILED, error)
    claim.settled = True
    if cls is not None:
        claim.record.status, claim.record.error = Status.FAILED, error
        handle = cls._from_record(claim.record)
        hooks.call(handle.on_failure, error)
        hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)


def announce_failure(
    record: SequenceRecord, cls: type[Sequence], handle: Sequence, error: str, worker: str
) -> None:
    """After a sequence failed for good: compensations, ``on_failure``, the signal."""
    compensate(record, cls, handle, worker)
    hooks.call(handle.on_failure, error)
    hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)


def compensate(record: SequenceRecord, cls: type[Sequence], handle: Sequence, worker: str) -> None:
    """Run compensate() of each completed step, last first, recording each outcome."""
    for index in reversed(range(record.step_index)):
        spec = cls.step_named(record.plan[index])
        if spec is None or not spec.compensates:
            continue
        step = spec.cls(
            data=record.data, sequence=handle, attempt=1,
            idempotency_key=f"{record.pk}:{index}:{spec.name}",
        )  # fmt: skip
        started = timezone.now()
        try:
            step.compensate()  # type: ignore[attr-defined]
        except Exception as exc:
            outcome, error, tb = (
                Outcome.COMPENSATION_FAILED,
                mask_text(f"{type(exc).__name__}: {exc}", record.data),
                mask_text(traceback.format_exc(), record.data),
            )
            logger.exception("Compensation of %s for sequence %s failed", spec.name, record.pk)
        else:
            outcome, error, tb = Outcome.COMPENSATED, "", ""
        StepAttempt.objects.create(
            sequence_id=record.pk, step_index=index, step=spec.name, epoch=record.epoch,
            attempt=1, outcome=outcome, started_at=started, finished_at=timezone.now(),
            worker=worker, error=error, traceback=tb,
        )  # fmt: skip


def job_failed(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ's failure callback: an abandoned job's sequence is checked at once.

    RQ calls this after every failed attempt, which ``run_step`` has already recorded,
    and for a job it found abandoned (its worker stopped sending heartbeats). Only the
    latter matters, and only if the sequence still shows that job's claim as dead by
    the sweep's own rules: a worker wrongly reported as gone changes nothing.
    """
    from rq.exceptions import AbandonedJobError

    if exc_type is not AbandonedJobError and not isinstance(exc, AbandonedJobError):
        return
    try:
        from sequence.recovery import check_sequence

        sequence_id, _step_index, epoch = job.args
        check_sequence(int(sequence_id), int(epoch), reason=f"RQ found job {job.id} abandoned")
    except Exception:
        # Raising here would stop RQ's registry cleanup; the sweep will look again.
        logger.exception("Checking the sequence of abandoned job %s failed", job.id)
