"""Queueing step jobs: the queues, deterministic job ids, the outbox, wake-up jobs.

A job names its entry point by a dotted path (RQ resolves it in the worker); workers run
it through ``sequence.jobs.SequenceJob``, which refuses any other.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any

from django.conf import settings as django_settings
from django.db.models import Q
from rq import Callback, Queue
from rq.job import Job
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
)
from rq.serializers import JSONSerializer

from sequence.declare.conf import settings
from sequence.declare.definitions import StepSpec
from sequence.declare.exceptions import ConfigurationError
from sequence.declare.registry import spec_for
from sequence.declare.retry import Retry
from sequence.engine.states import Status
from sequence.models import SequenceRecord

logger = logging.getLogger("sequence")

ENTRY_POINT = "sequence.runner.run_step"
# The only callback a step job may name: it checks an abandoned job's sequence at once.
FAILURE_CALLBACK = "sequence.jobs.job_failed"


# The kinds of unit a job runs: a step, a ForEach element (item), the compensation
# (undo) of a completed step or element, or the wake-up (wake) of a sequence whose Sleep
# or WaitFor deadline is due.
STEP, ITEM, UNDO, WAKE = "step", "item", "undo", "wake"

# (plan index, kind, element position or None)
Unit = tuple[int, str, int | None]


@dataclass(frozen=True, kw_only=True)
class Work:
    """One unit of work of a sequence under an epoch, as its job carries it: a step, a
    ForEach element (``element``), a compensation or a wake-up (``kind``)."""

    sequence: int
    index: int
    epoch: int
    kind: str = STEP
    element: int | None = None

    @property
    def job_id(self) -> str:
        return job_id(self.sequence, self.index, self.epoch, self.kind, self.element)


def job_id(
    sequence_id: int, step_index: int, epoch: int, kind: str = STEP, item: int | None = None
) -> str:
    """The id of the job that runs a unit of a sequence under ``epoch``."""
    suffix = "" if kind == STEP else f"-{kind}"
    element = "" if item is None else f"-{item}"
    return f"seq-{sequence_id}-{step_index}-{epoch}{suffix}{element}"


def unit_of(record: SequenceRecord) -> Unit:
    """The unit a row's next job runs: (plan index, kind, element)."""
    if record.status == Status.COMPENSATING and record.undo_index is not None:
        return record.undo_index, UNDO, record.undo_item
    return record.step_index, STEP, None


@cache
def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` from ``RQ_QUEUES``, with JSON payloads."""
    import django_rq

    connection = django_rq.get_connection(name)
    return Queue(name, connection=connection, serializer=JSONSerializer)


def known_queue(name: str) -> str:
    """``name``, if RQ_QUEUES has it: a queue given when starting, checked before anything
    is saved (a class's queues are checked at start-up, as sequence.E002)."""
    configured = getattr(django_settings, "RQ_QUEUES", {})
    if name not in configured:
        raise ConfigurationError(
            f"queue={name!r} is not in RQ_QUEUES (it has {', '.join(map(repr, configured))}); "
            "add it there, or start the sequence on one of those."
        )
    return name


def queue_for(spec: StepSpec | None, queue: str) -> str:
    """The queue a step runs on: its own, else its sequence's (``queue``)."""
    return (spec and spec.cls.queue) or queue


def server_of(queue: Queue) -> tuple[Any, ...]:
    """Which Redis server and database a queue lives on."""
    kwargs = queue.connection.connection_pool.connection_kwargs
    return tuple(kwargs.get(k) for k in ("host", "port", "db", "path", "username"))


def _options(
    sequence_id: int,
    step_index: int,
    epoch: int,
    spec: StepSpec | None,
    retry: Retry | None = None,
    kind: str = STEP,
    item: int | None = None,
) -> dict[str, Any]:
    """What RQ is told about one step job: its id, retries and how long Redis keeps it."""
    args: tuple[Any, ...] = (sequence_id, step_index, epoch)
    if kind != STEP:
        args += (kind,) if item is None else (kind, item)
    return {
        "args": args,
        "job_id": job_id(sequence_id, step_index, epoch, kind, item),
        "retry": (retry or retry_of(spec)).to_rq(),
        "result_ttl": settings.RESULT_TTL,
        # The database keeps every attempt; RQ's failed registry need not keep it long.
        "failure_ttl": settings.FAILED_TTL,
        "description": description(sequence_id, step_index, kind, item, spec),
        "on_failure": Callback(FAILURE_CALLBACK),
    }


def description(
    sequence_id: int, step_index: int, kind: str, item: int | None, spec: StepSpec | None
) -> str:
    """What RQ (and its dashboards) call a job: ``sequence 7 step 0 (Charge)``."""
    what = {
        STEP: "step", ITEM: "element of step", UNDO: "compensation of step", WAKE: "wake-up at step",
    }[kind]  # fmt: skip
    return (
        f"sequence {sequence_id} {what} {step_index}"
        + (f" [{item}]" if item is not None else "")
        + (f" ({spec.name})" if spec is not None else "")
    )


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
    item: int | None = None,
) -> None:
    """Queue one step job. Safe to repeat: the job id names the step and epoch.

    With ``SEQUENCE_TESTING`` nothing is queued: the row says the unit is due, and
    ``sequence.testing.drain()`` runs it.
    """
    if settings.TESTING:
        return
    rq_queue = get_queue(queue_for(spec, queue))
    options = _options(sequence_id, step_index, epoch, spec, retry, kind, item)
    timeout = timeout_of(spec)
    if delay:
        rq_queue.enqueue_in(timedelta(seconds=delay), ENTRY_POINT, job_timeout=timeout, **options)
    else:
        # One round trip: enqueue_call spends a first one adding the queue to RQ's set.
        rq_queue.enqueue_many([Queue.prepare_data(ENTRY_POINT, timeout=timeout, **options)])


def enqueue_first_steps(sequence_ids: Sequence[int], queue: str, spec: StepSpec | None) -> None:
    """Queue the first step of many new sequences in one Redis pipeline (one round trip).

    The jobs are the ones ``enqueue_step`` would queue one by one: same ids, fields and
    serializer. RQ builds and prepares the first; the others are its hash with their
    own id, arguments and description, one HSET each, and one RPUSH queues them all
    (RQ's own ``enqueue_many`` sends three commands per job and builds each job anew).
    Nothing is queued with ``SEQUENCE_TESTING``.
    """
    if settings.TESTING or not sequence_ids:
        return
    rq_queue = get_queue(queue_for(spec, queue))
    first = rq_queue.create_job(
        ENTRY_POINT, timeout=timeout_of(spec), **_options(sequence_ids[0], 0, 0, spec)
    )
    rq_queue._prepare_for_queue(first)  # origin, enqueue time, default timeout, status
    fields = first.to_dict()
    dumps = first.serializer.dumps
    ids = [job_id(pk, 0, 0) for pk in sequence_ids]
    with rq_queue.connection.pipeline() as pipe:
        for pk, id_ in zip(sequence_ids, ids, strict=True):
            data = zlib.compress(dumps((ENTRY_POINT, None, (pk, 0, 0), {})))
            mapping = {**fields, "data": data, "description": description(pk, 0, STEP, None, spec)}
            pipe.hset(Job.key_for(id_), mapping=mapping)
        pipe.rpush(rq_queue.key, *ids)
        pipe.execute()


def enqueue_items(
    sequence_id: int, step_index: int, epoch: int, queue: str, spec: StepSpec | None,
    items: Sequence[int],
) -> bool:  # fmt: skip
    """Queue the jobs of elements of one ForEach, in one Redis pipeline (the place a
    commit hands on, a ForEach's first places, or its places after a resume). False
    leaves them for the sweep (an element's outbox entry is on its own row, cleared by
    its claim); nothing is queued with ``SEQUENCE_TESTING``."""
    if settings.TESTING or not items:
        return True
    timeout = timeout_of(spec)
    options = [_options(sequence_id, step_index, epoch, spec, kind=ITEM, item=i) for i in items]
    datas = [Queue.prepare_data(ENTRY_POINT, timeout=timeout, **each) for each in options]
    try:
        get_queue(queue_for(spec, queue)).enqueue_many(datas)  # one pipeline
    except Exception:
        logger.exception(
            "Could not queue %s elements of step %s of sequence %s; the recovery sweep will.",
            len(items), step_index, sequence_id,
        )  # fmt: skip
        return False
    return True


def dispatch_many(records: list[SequenceRecord], *, at_front: bool = False) -> int:
    """Queue the unit each row says is due, one Redis pipeline per queue; clear the outbox.

    Returns how many were queued. A queue that cannot be reached leaves its rows'
    outbox entries for the sweep. Nothing is queued with ``SEQUENCE_TESTING``.
    ``at_front`` pushes each job to the head of its queue, in turn: the last row ends
    up first.
    """
    if settings.TESTING:
        return 0
    by_queue: dict[str, list[tuple[SequenceRecord, Any]]] = {}
    for record in records:
        index, kind, item = unit_of(record)
        spec = spec_for(record, index)
        options = _options(record.pk, index, record.epoch, spec, kind=kind, item=item)
        data = Queue.prepare_data(
            ENTRY_POINT, timeout=timeout_of(spec), at_front=at_front, **options
        )
        by_queue.setdefault(queue_for(spec, record.queue), []).append((record, data))
    queued: dict[int, list[int]] = {}
    for name, items in by_queue.items():
        rq_queue = get_queue(name)
        try:
            rq_queue.enqueue_many([data for _, data in items])  # one pipeline
        except Exception:
            logger.exception(
                "Could not queue %s steps on queue %r; the recovery sweep will.", len(items), name
            )
            continue
        for record, _ in items:
            queued.setdefault(record.epoch, []).append(record.pk)
    if queued:
        confirm_dispatch(queued)
    return sum(len(pks) for pks in queued.values())


# The registries a job of ours may sit in while no worker runs it (a started job is left
# to its worker).
RESTING = (
    ScheduledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    CanceledJobRegistry,
    FinishedJobRegistry,
)


def delete_jobs(queue_name: str, ids: list[str], *, waiting_only: bool = False) -> int:
    """Delete these jobs from Redis: their hashes, results and places in the queue's
    registries, in two pipelined round trips. Returns how many hashes existed.

    With ``waiting_only``, only jobs that are queued, scheduled or deferred (a worker
    may be running the others).
    """
    if not ids:
        return 0
    rq_queue = get_queue(queue_name)
    connection = rq_queue.connection
    prefix = rq_queue.job_class.redis_job_namespace_prefix
    with connection.pipeline() as pipe:
        for job in ids:
            pipe.hget(prefix + job, "status")
        statuses = pipe.execute()
    present = [
        job
        for job, status in zip(ids, statuses, strict=True)
        if status is not None
        and (not waiting_only or status.decode() in ("queued", "scheduled", "deferred"))
    ]
    absent = [job for job, status in zip(ids, statuses, strict=True) if status is None]
    with connection.pipeline(transaction=False) as pipe:
        # A missing hash may still leave an entry in a registry (RQ cleans registries
        # lazily); only when all are asked for, so that a running job is never touched.
        for job in present + ([] if waiting_only else absent):
            pipe.lrem(rq_queue.key, 0, job)
            for registry in RESTING:
                pipe.zrem(registry.key_template.format(queue_name), job)
            pipe.delete(prefix + job, f"rq:results:{job}", f"{prefix}{job}:dependents")
        pipe.execute()
    return len(present)


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


def dispatch(work: Work, queue: str, spec: StepSpec | None, *, confirm: bool = True) -> bool:
    """Queue a due unit and clear its outbox entry; False leaves it for the sweep.

    With ``confirm=False`` the entry stays: the step's claim clears it, or the sweep
    once it sees the job in RQ. The runner passes it to save a write per step.
    """
    try:
        enqueue_step(
            work.sequence, work.index, work.epoch, queue, spec, kind=work.kind, item=work.element
        )
    except Exception:
        logger.exception(
            "Could not queue step %s of sequence %s (job %s); the recovery sweep will.",
            work.index,
            work.sequence,
            work.job_id,
        )
        return False
    if confirm:
        confirm_dispatch({work.epoch: [work.sequence]})
    return True


def dispatch_record(record: SequenceRecord, *, confirm: bool = True) -> bool:
    """Queue the unit the row says is due (its step, or the compensation the walk is at)."""
    index, kind, item = unit_of(record)
    spec = spec_for(record, index)
    work = Work(sequence=record.pk, index=index, epoch=record.epoch, kind=kind, element=item)
    return dispatch(work, record.queue, spec, confirm=confirm)


def confirm_dispatch(queued: dict[int, list[int]]) -> None:
    """Clear the outbox entries of rows whose jobs are queued ({epoch: [sequence ids]})."""
    same = Q()
    for epoch, pks in queued.items():
        same |= Q(epoch=epoch, pk__in=pks)
    SequenceRecord.objects.filter(same, dispatch_due__isnull=False).update(dispatch_due=None)
