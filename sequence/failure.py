"""Failure: a failed attempt recorded, a sequence failed for good, and what follows it.

After a sequence fails for good its completed steps' compensations run, last first,
then ``on_failure`` and the ``sequence_failed`` signal.
"""

from __future__ import annotations

import logging
import traceback

from django.utils import timezone

from sequence import history, hooks, signals, transitions
from sequence.claims import Claim
from sequence.definitions import SequenceDefinition, StepSpec
from sequence.masking import mask_text
from sequence.models import SequenceRecord
from sequence.states import Outcome, Status

logger = logging.getLogger("sequence")


def record_failure(
    claim: Claim, cls: type[SequenceDefinition], spec: StepSpec, exc: Exception, *, will_retry: bool
) -> bool:
    """Record a failed attempt; True if RQ should see the exception (and maybe retry)."""
    record = claim.record
    error = mask_text(f"{type(exc).__name__}: {exc}", record.data)
    tb = mask_text(traceback.format_exc(), record.data)
    status = transitions.fail(claim, error, tb, will_retry=will_retry)
    if status is None:
        logger.warning(
            "Sequence %s step %s failed after losing its claim: %s",
            record.pk, record.step_index, error,
        )  # fmt: skip
        return False
    record.error, record.status = error, status
    handle = cls._bind(record)
    hooks.send(
        signals.step_failed, cls, sequence=handle, step=spec.name,
        step_index=record.step_index, attempt=record.attempt, error=error,
        will_retry=status == Status.RETRYING,
    )  # fmt: skip
    if status == Status.FAILED:
        announce_failure(record, cls, handle, error, claim.worker)
    return True


def fail_for_good(claim: Claim, cls: type[SequenceDefinition] | None, error: str) -> None:
    """Fail the sequence at once, without retries: its plan cannot run here."""
    logger.error("Sequence %s: %s", claim.record.pk, error)
    if transitions.fail(claim, error, will_retry=False) != Status.FAILED or cls is None:
        return
    claim.record.status, claim.record.error = Status.FAILED, error
    handle = cls._bind(claim.record)
    hooks.call(handle.on_failure, error)
    hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)


def announce_failure(
    record: SequenceRecord,
    cls: type[SequenceDefinition],
    handle: SequenceDefinition,
    error: str,
    worker: str,
) -> None:
    """After a sequence failed for good: compensations, ``on_failure``, the signal."""
    compensate(record, cls, handle, worker)
    hooks.call(handle.on_failure, error)
    hooks.send(signals.sequence_failed, cls, sequence=handle, error=error)


def compensate(
    record: SequenceRecord, cls: type[SequenceDefinition], handle: SequenceDefinition, worker: str
) -> None:
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
        history.write(
            history.Entry(
                record.pk, index, spec.name, record.epoch, 1, outcome, started, worker, error, tb
            )
        )
