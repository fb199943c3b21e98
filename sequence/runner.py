"""The RQ entry point: claim a step, run it, commit its result, queue the next.

A job carries only ``(sequence id, step index, epoch)``. The row is the truth: a job
whose step or epoch no longer matches the row is stale and ends quietly, so RQ may
deliver a job any number of times and a step is still recorded once.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, ExpressionWrapper, F, Value, When
from django.db.models import DateTimeField as DateTimeOutput
from django.db.models.functions import Now
from django.utils import timezone

from sequence import hooks, signals
from sequence.conf import settings
from sequence.definitions import Sequence, StepSpec, get_sequence_class
from sequence.dispatch import dispatch
from sequence.exceptions import (
    InvalidData,
    StepDeadlineExceeded,
    StepFenced,
    UnknownSequence,
)
from sequence.masking import mask_text
from sequence.models import SequenceRecord, StepAttempt
from sequence.states import Outcome, Status
from sequence.validation import check_data

logger = logging.getLogger("sequence")

# Test points: named places in the protocol where tests crash or stall a worker.
# Empty in production; see sequence.testing.
test_points: dict[str, Callable[[], None]] = {}


def _point(name: str) -> None:
    if test_points:
        action = test_points.get(name)
        if action is not None:
            action()


@dataclass
class Claim:
    """A step taken by this process: what the job runs on, and the token fencing it."""

    record: SequenceRecord
    token: str
    worker: str
    started_at: datetime
    started: float
    timeout: int

    @property
    def lease_seconds(self) -> int:
        return self.timeout + settings.LEASE_MARGIN

    def mine(self) -> Any:
        """The row as long as this claim holds it."""
        r = self.record
        return SequenceRecord.objects.filter(pk=r.pk, epoch=r.epoch, claim_token=self.token)


def spec_for(name: str, plan: list[str], index: int) -> StepSpec | None:
    """The current definition of step ``index`` of a stored plan, if it still exists."""
    try:
        cls = get_sequence_class(name)
    except UnknownSequence:
        return None
    return cls.step_named(plan[index]) if index < len(plan) else None


def run_step(sequence_id: int, step_index: int, epoch: int) -> None:
    """Run step ``step_index`` of a sequence, if the job is still the one the row expects."""
    from rq import get_current_job

    job = get_current_job()
    worker = (job and job.worker_name) or f"{socket.gethostname()}:{os.getpid()}"
    retries_left = (job.retries_left or 0) if job is not None else 0
    # The job was queued with the step's timeout: the lease must outlast it.
    timeout = (job and job.timeout) or settings.TIMEOUT

    claim = _claim(sequence_id, step_index, epoch, worker, timeout)
    if claim is None:
        _stale(sequence_id, step_index, epoch)
        return
    record = claim.record
    try:
        spec_cls = get_sequence_class(record.name)
    except UnknownSequence as exc:
        _fail_for_good(claim, None, str(exc))
        return
    spec = spec_cls.step_named(record.plan[step_index])
    if spec is None:
        _fail_for_good(
            claim,
            spec_cls,
            f"Step {record.plan[step_index]!r} of {record.name} (version {record.version!r}) "
            "no longer exists; restore it or retry with a plan that has it.",
        )
        return
    handle = spec_cls._from_record(record)
    _point("after_claim")
    try:
        if spec.cls.atomic:
            with transaction.atomic():
                data = _perform(spec, claim, handle)
                moved = _commit(claim, data)
        else:
            data = _perform(spec, claim, handle)
            _point("before_commit")
            with transaction.atomic():
                moved = _commit(claim, data)
    except StepFenced as exc:
        logger.warning("Sequence %s step %s: %s", sequence_id, step_index, exc)
        return
    except Exception as exc:
        if _record_failure(claim, spec_cls, spec, exc, will_retry=retries_left > 0):
            raise
        return
    _point("after_commit")
    _after_commit(claim, spec_cls, spec, moved, data)


def _claim(
    sequence_id: int, step_index: int, epoch: int, worker: str, timeout: int
) -> Claim | None:
    """Take the step if the row still expects it; None if the job is stale."""
    token = uuid.uuid4().hex
    lease_seconds = timeout + settings.LEASE_MARGIN
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    if connection.vendor == "postgresql":
        now = "CURRENT_TIMESTAMP"
        lease, lease_arg = f"{now} + %s * INTERVAL '1 second'", lease_seconds
    else:
        now = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"
        lease, lease_arg = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)", f"+{lease_seconds} seconds"
    # A claim takes a queued or retrying step, a running one whose lease ran out
    # (its worker died), or a failed one whose job was requeued by hand.
    sql = f"""
        UPDATE {table}
        SET status = %s, claim_token = %s, claimed_by = %s, lease_until = {lease},
            attempt = attempt + 1, dispatch_due = NULL, updated_at = {now}
        WHERE id = %s AND epoch = %s AND step_index = %s AND (
            status IN (%s, %s, %s) OR (status = %s AND lease_until < {now}))
        RETURNING name, data, plan, version, queue, attempt
    """  # noqa: S608 - identifiers come from the model, values are parameters
    params = [
        Status.RUNNING, token, worker[:200], lease_arg,
        sequence_id, epoch, step_index,
        Status.PENDING, Status.RETRYING, Status.FAILED, Status.RUNNING,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    name, data, plan, version, queue, attempt = row
    record = SequenceRecord(
        pk=sequence_id,
        name=name,
        status=Status.RUNNING,
        data=json.loads(data) if isinstance(data, str) else data,
        plan=json.loads(plan) if isinstance(plan, str) else plan,
        version=version,
        queue=queue,
        step_index=step_index,
        epoch=epoch,
        attempt=attempt,
        claim_token=token,
    )
    return Claim(record, token, worker, timezone.now(), time.monotonic(), timeout)


def _stale(sequence_id: int, step_index: int, epoch: int) -> None:
    """A job the row no longer expects: queue a successor whose dispatch was lost, then end."""
    record = SequenceRecord.objects.filter(pk=sequence_id).first()
    if record is None:
        logger.warning("Sequence %s no longer exists; its step job ends.", sequence_id)
        return
    logger.info(
        "Sequence %s step %s epoch %s is stale (row: %s, step %s, epoch %s); job ends.",
        sequence_id, step_index, epoch, record.status, record.step_index, record.epoch,
    )  # fmt: skip
    if record.dispatch_due is not None and record.status == Status.PENDING and record.epoch > epoch:
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
        heartbeat=lambda: _heartbeat(claim),
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
    if time.monotonic() - claim.started > claim.timeout:
        raise StepDeadlineExceeded(
            f"Step {spec.name!r} ran past its timeout of {claim.timeout}s; "
            "its result is not committed."
        )
    return step.data


def _heartbeat(claim: Claim) -> None:
    lease = ExpressionWrapper(
        Now() + timedelta(seconds=claim.lease_seconds), output_field=DateTimeOutput()
    )
    if not claim.mine().filter(status=Status.RUNNING).update(lease_until=lease):
        raise StepFenced(
            f"Sequence {claim.record.pk} was paused, canceled or taken over; stop this step."
        )


def _commit(claim: Claim, data: dict[str, Any]) -> str:
    """Save the data and move to the next step; return the status it moved from."""
    record = claim.record
    last = record.step_index + 1 >= len(record.plan)
    done = Now() if last else None
    moved = {
        "data": data,
        "step_index": record.step_index + 1,
        "epoch": record.epoch + 1,
        "claim_token": None,
        "claimed_by": "",
        "lease_until": None,
        "attempt": 0,
        "recoveries": 0,
        "error": "",
        "updated_at": Now(),
    }
    live = claim.mine().filter(lease_until__gt=Now())
    was = Status.RUNNING
    if not live.filter(status=Status.RUNNING).update(
        status=Status.COMPLETED if last else Status.PENDING,
        dispatch_due=None if last else Now(),
        finished_at=done,
        **moved,
    ):
        # Paused or canceled while the step ran: keep the result, start nothing.
        was = Status.PAUSED
        if not live.filter(status__in=[Status.PAUSED, Status.CANCELED]).update(
            status=Case(
                When(status=Status.PAUSED, then=Value(Status.COMPLETED if last else Status.PAUSED)),
                default=F("status"),
            ),
            dispatch_due=None,
            finished_at=Case(When(status=Status.PAUSED, then=done), default=F("finished_at")),
            **moved,
        ):
            raise StepFenced(
                f"step {record.step_index} lost its claim (lease expired or taken over); "
                "its result is discarded."
            )
    _attempt(claim, Outcome.SUCCEEDED)
    return was


def _attempt(claim: Claim, outcome: str, error: str = "", tb: str = "") -> None:
    record = claim.record
    StepAttempt.objects.create(
        sequence_id=record.pk,
        step_index=record.step_index,
        step=record.plan[record.step_index],
        epoch=record.epoch,
        attempt=record.attempt,
        outcome=outcome,
        started_at=claim.started_at,
        finished_at=timezone.now(),
        worker=claim.worker,
        error=error,
        traceback=tb,
    )


def _after_commit(
    claim: Claim, cls: type[Sequence], spec: StepSpec, was: str, data: dict[str, Any]
) -> None:
    record = claim.record
    next_index = record.step_index + 1
    last = next_index >= len(record.plan)
    if was == Status.RUNNING and not last:
        dispatch(
            record.pk, next_index, record.epoch + 1, record.queue,
            cls.step_named(record.plan[next_index]),
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


def _record_failure(
    claim: Claim, cls: type[Sequence], spec: StepSpec, exc: Exception, *, will_retry: bool
) -> bool:
    """Record a failed attempt; True if RQ should see the exception (and maybe retry)."""
    error = mask_text(f"{type(exc).__name__}: {exc}", claim.record.data)
    tb = mask_text(traceback.format_exc(), claim.record.data)
    fields = {"claim_token": None, "claimed_by": "", "lease_until": None, "error": error}
    with transaction.atomic():
        failed = False
        if will_retry:
            changed = claim.mine().filter(status=Status.RUNNING).update(
                status=Status.RETRYING, updated_at=Now(), **fields
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
            return False
        _attempt(claim, Outcome.FAILED, error, tb)
    record = claim.record
    record.error = error
    record.status = Status.FAILED if failed else Status.RETRYING
    handle = cls._from_record(record)
    hooks.send(
        signals.step_failed, cls, sequence=handle, step=spec.name,
        step_index=record.step_index, attempt=record.attempt, error=error, will_retry=will_retry,
    )  # fmt: skip
    if failed:
        _compensate(claim, cls, handle)
        hooks.call(handle.on_failure, error)
        hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)
    return True


def _fail_for_good(claim: Claim, cls: type[Sequence] | None, error: str) -> None:
    """Fail the sequence at once, without retries: its plan cannot run here."""
    logger.error("Sequence %s: %s", claim.record.pk, error)
    with transaction.atomic():
        if not claim.mine().update(
            status=Status.FAILED, claim_token=None, claimed_by="", lease_until=None,
            error=error, finished_at=Now(), updated_at=Now(),
        ):  # fmt: skip
            return
        _attempt(claim, Outcome.FAILED, error)
    if cls is not None:
        claim.record.status, claim.record.error = Status.FAILED, error
        handle = cls._from_record(claim.record)
        hooks.call(handle.on_failure, error)
        hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)


def _compensate(claim: Claim, cls: type[Sequence], handle: Sequence) -> None:
    """Run compensate() of each completed step, last first, recording each outcome."""
    record = claim.record
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
            worker=claim.worker, error=error, traceback=tb,
        )  # fmt: skip
