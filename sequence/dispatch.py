"""Queueing step jobs: the queues, deterministic job ids, the outbox.

A job names its entry point by a dotted path (RQ resolves it in the worker); workers run
it through ``sequence.jobs.SequenceJob``, which refuses any other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import cache
from typing import Any

from django.db.models import Q
from rq import Callback, Queue
from rq.serializers import JSONSerializer

from sequence.conf import settings
from sequence.definitions import StepSpec
from sequence.models import SequenceRecord
from sequence.registry import spec_for
from sequence.retry import Retry
from sequence.states import Status

logger = logging.getLogger("sequence")

ENTRY_POINT = "sequence.runner.run_step"
# The only callback a step job may name: it checks an abandoned job's sequence at once.
FAILURE_CALLBACK = "sequence.jobs.job_failed"


# The kinds of unit a job runs: a step, or the compensation (undo) of a completed step.
STEP, UNDO = "step", "undo"


def job_id(sequence_id: int, step_index: int, epoch: int, kind: str = STEP) -> str:
    """The id of the job that runs ``step_index`` of a sequence under ``epoch``."""
    suffix = "" if kind == STEP else f"-{kind}"
    return f"seq-{sequence_id}-{step_index}-{epoch}{suffix}"


def unit_of(record: SequenceRecord) -> tuple[int, str]:
    """The unit a row's next job runs: (plan index, kind)."""
    if record.status == Status.COMPENSATING and record.undo_index is not None:
        return record.undo_index, UNDO
    return record.step_index, STEP


@cache
def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` from ``RQ_QUEUES``, with JSON payloads."""
    import django_rq

    connection = django_rq.get_connection(name)
    return Queue(name, connection=connection, serializer=JSONSerializer)


def queue_for(spec: StepSpec | None, queue: str) -> str:
    """The queue a step runs on: its own, else its sequence's (``queue``)."""
    return (spec and spec.cls.queue) or queue


def server_of(queue: Queue) -> tuple[Any, ...]:
    """Which Redis server and database a queue lives on."""
    kwargs = queue.connection.connection_pool.connection_kwargs
    return tuple(kwargs.get(k) for k in ("host", "port", "db", "path", "username"))


def enqueue_step(
    sequence_id: int,
    step_index: int,
    epoch: int,
    queue: str,
    spec: StepSpec | None,
    *,
    retry: Retry | None = None,
    delay: int = 0,
    kind: str = STEP,
) -> None:
    """Queue one step job. Safe to repeat: the job id names the step and epoch.

    With ``SEQUENCE_TESTING`` nothing is queued: the row says the unit is due, and
    ``sequence.testing.drain()`` runs it.
    """
    if settings.TESTING:
        return
    rq_queue = get_queue(queue_for(spec, queue))
    options = job_options(sequence_id, step_index, epoch, spec, retry=retry, kind=kind)
    timeout = timeout_of(spec)
    if delay:
        rq_queue.enqueue_in(timedelta(seconds=delay), ENTRY_POINT, job_timeout=timeout, **options)
    else:
        rq_queue.enqueue_call(ENTRY_POINT, timeout=timeout, **options)


def job_options(
    sequence_id: int,
    step_index: int,
    epoch: int,
    spec: StepSpec | None,
    *,
    retry: Retry | None = None,
    kind: str = STEP,
) -> dict[str, Any]:
    """What every job of a unit carries: its id, arguments, retries, TTL and callback."""
    what = "compensation of step" if kind == UNDO else "step"
    return {
        "args": (sequence_id, step_index, epoch) + ((kind,) if kind != STEP else ()),
        "job_id": job_id(sequence_id, step_index, epoch, kind),
        "retry": (retry or retry_of(spec)).to_rq(),
        "result_ttl": settings.RESULT_TTL,
        "description": f"sequence {sequence_id} {what} {step_index}"
        + (f" ({spec.name})" if spec is not None else ""),
        "on_failure": Callback(FAILURE_CALLBACK),
    }


def enqueue_first_steps(sequence_ids: Sequence[int], queue: str, spec: StepSpec | None) -> None:
    """Queue the first step of many new sequences in one Redis pipeline (one round trip).

    The jobs are the ones ``enqueue_step`` would queue one by one: same ids, options
    and serializer. Nothing is queued with ``SEQUENCE_TESTING``.
    """
    if settings.TESTING or not sequence_ids:
        return
    rq_queue = get_queue(queue_for(spec, queue))
    timeout = timeout_of(spec)
    jobs = [
        Queue.prepare_data(ENTRY_POINT, timeout=timeout, **job_options(pk, 0, 0, spec))
        for pk in sequence_ids
    ]
    with rq_queue.connection.pipeline() as pipe:
        rq_queue.enqueue_many(jobs, pipeline=pipe)
        pipe.execute()


def enqueue_retry(
    sequence_id: int, step_index: int, epoch: int, queue: str, spec: StepSpec | None
) -> None:
    """Queue the retries of a step whose first attempt ran inline and failed.

    The job gets what RQ would have left after that attempt: the first interval as its
    delay, and the remaining retries with the remaining intervals.
    """
    delay, rest = retry_of(spec).after_first()
    enqueue_step(sequence_id, step_index, epoch, queue, spec, retry=rest, delay=delay)


def retry_of(spec: StepSpec | None) -> Retry:
    """The step's retries: its own ``retry``, else ``SEQUENCE_RETRY``."""
    own = spec.cls.retry if spec is not None else None
    return Retry.coerce(own if own is not None else settings.RETRY)


def timeout_of(spec: StepSpec | None) -> int:
    """The step's timeout in seconds: its own ``timeout``, else ``SEQUENCE_TIMEOUT``."""
    return (spec and spec.cls.timeout) or settings.TIMEOUT


def dispatch(
    sequence_id: int,
    step_index: int,
    epoch: int,
    queue: str,
    spec: StepSpec | None,
    *,
    confirm: bool = True,
    kind: str = STEP,
) -> bool:
    """Queue a due step and clear its outbox entry; False leaves it for the sweep.

    With ``confirm=False`` the entry stays: the step's claim clears it, or the sweep
    once it sees the job in RQ. The runner passes it to save a write per step.
    """
    try:
        enqueue_step(sequence_id, step_index, epoch, queue, spec, kind=kind)
    except Exception:
        logger.exception(
            "Could not queue step %s of sequence %s; the recovery sweep will.",
            step_index,
            sequence_id,
        )
        return False
    if confirm:
        confirm_dispatch({epoch: [sequence_id]})
    return True


def dispatch_record(record: SequenceRecord, *, confirm: bool = True) -> bool:
    """Queue the unit the row says is due (its step, or the compensation the walk is at)."""
    index, kind = unit_of(record)
    spec = spec_for(record, index)
    return dispatch(record.pk, index, record.epoch, record.queue, spec, confirm=confirm, kind=kind)


def confirm_dispatch(queued: dict[int, list[int]]) -> None:
    """Clear the outbox entries of rows whose jobs are queued ({epoch: [sequence ids]})."""
    same = Q()
    for epoch, pks in queued.items():
        same |= Q(epoch=epoch, pk__in=pks)
    SequenceRecord.objects.filter(same, dispatch_due__isnull=False).update(dispatch_due=None)
