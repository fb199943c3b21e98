"""Wake-up jobs: where no ``sequence worker`` wakes sleepers (``rqworker``, a web
process resuming one), a job scheduled with RQ's scheduler at a sleep's wake-up time or
a wait's deadline runs the wake pass for its one sequence. The row stays the truth."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from datetime import datetime

from rq import Queue
from rq.job import JobStatus
from rq.registry import (
    ScheduledJobRegistry,
)

from sequence.declare.conf import settings
from sequence.declare.registry import spec_for
from sequence.declare.retry import Retry
from sequence.engine.rq.dispatch import (
    ENTRY_POINT,
    WAKE,
    description,
    get_queue,
    job_id,
    queue_for,
)
from sequence.models import SequenceRecord

logger = logging.getLogger("sequence")

# Seconds a wake-up job outlives its time in Redis, scheduled or queued. Without RQ's
# scheduler (a worker run without --with-scheduler), or with no worker on its queue for
# that long, it expires unrun; the row still says what is due, and the wake pass of
# `sequence worker` or the recovery sweep wakes it.
WAKE_JOB_GRACE = 86400
# Seconds a wake-up job may run (one sequence's wake-up: a few statements).
WAKE_JOB_TIMEOUT = 60
# A wake-up job that fails (the database was unreachable) runs again a second later.
WAKE_JOB_RETRY = Retry(max=3, interval=1)

# (sequence id, step index, epoch, queue, due time): one wake-up job.
Wake = tuple[int, int, int, str, datetime]


class _WakePass:
    """Set in a ``sequence worker`` process whose maintenance thread wakes what is due
    every SEQUENCE_WAKE_INTERVAL seconds: the sleeps and waits it begins need no job, so
    they hold no key in Redis (the bench's "no Redis keys per sleeper")."""

    running = False


wake_pass = _WakePass()


def schedule_wake(record: SequenceRecord, step_index: int, epoch: int, at: datetime) -> bool:
    """Schedule the job that wakes ``record``'s sequence, asleep at ``step_index`` under
    ``epoch``, at ``at``; False if Redis could not be told (see ``schedule_wakes``)."""
    queue = queue_for(spec_for(record, step_index), record.queue)
    return _schedule_all([(record.pk, step_index, epoch, queue, at)]) == 1


def schedule_wakes(records: Iterable[SequenceRecord]) -> int:
    """Schedule the wake-up jobs of rows asleep as they are now (``wake_at`` set); returns
    how many were scheduled, in one Redis pipeline per queue.

    The job, ``run_step(id, step, epoch, "wake")`` named ``seq-<id>-<step>-<epoch>-wake``,
    is due at the row's wake-up time (a Sleep's) or deadline (a WaitFor's timeout), on the
    queue of the step after it, and RQ's scheduler queues it then. It lets a worker without
    the wake pass of ``sequence worker`` (django-rq's ``rqworker --with-scheduler``) wake
    sequences on time. The row stays the truth: the job wakes only what the row says is
    due when it runs, so one that comes early, twice, or after the sequence moved on does
    nothing. Redis unreachable is logged, and left to the wake passes and the sweep.
    Nothing is scheduled with ``SEQUENCE_TESTING``, nor in a process that runs the wake
    pass itself (``wake_pass``).
    """
    return _schedule_all(
        (r.pk, r.step_index, r.epoch, queue_for(spec_for(r), r.queue), r.wake_at)
        for r in records
        if r.wake_at is not None
    )


def _schedule_all(wakes: Iterable[Wake]) -> int:
    if settings.TESTING or wake_pass.running:
        return 0
    by_queue: dict[str, list[Wake]] = {}
    for wake in wakes:
        by_queue.setdefault(wake[3], []).append(wake)
    scheduled = 0
    for name, items in by_queue.items():
        try:
            _schedule(get_queue(name), items)
        except Exception:
            logger.exception(
                "Could not schedule the wake-up of %s on queue %r; the wake passes of "
                "`sequence worker` and the recovery sweep will wake %s.",
                _sequences(items), name, "it" if len(items) == 1 else "them",
            )  # fmt: skip
            continue
        scheduled += len(items)
    return scheduled


def _schedule(rq_queue: Queue, wakes: list[Wake]) -> None:
    """Add the wake-up jobs to the queue's scheduled registry, in one round trip.

    As ``Queue.schedule_job`` does, but in the pipeline: it adds to the registry outside
    it, before the job's hash exists, which a scheduler running meanwhile would drop.
    """
    registry = ScheduledJobRegistry.key_template.format(rq_queue.name)
    now = int(time.time())
    with rq_queue.connection.pipeline() as pipe:
        pipe.sadd(rq_queue.redis_queues_keys, rq_queue.key)
        for sequence_id, step_index, epoch, _, at in wakes:
            # RQ's registry holds whole seconds and moves a job once its second has begun:
            # the next whole second, so that the job never comes before the time.
            due = math.ceil(at.timestamp())
            job = rq_queue.create_job(
                ENTRY_POINT,
                args=(sequence_id, step_index, epoch, WAKE),
                job_id=job_id(sequence_id, step_index, epoch, WAKE),
                status=JobStatus.SCHEDULED,
                timeout=WAKE_JOB_TIMEOUT,
                ttl=max(0, due - now) + WAKE_JOB_GRACE,
                result_ttl=settings.RESULT_TTL,
                failure_ttl=settings.FAILED_TTL,
                retry=WAKE_JOB_RETRY.to_rq(),
                description=description(sequence_id, step_index, WAKE, None, None),
            )
            rq_queue._persist_job(job, pipe, status=JobStatus.SCHEDULED)
            pipe.zadd(registry, {job.id: due})
        pipe.execute()


def _sequences(wakes: list[Wake]) -> str:
    ids = ", ".join(str(wake[0]) for wake in wakes[:10])
    more = f" and {len(wakes) - 10} more" if len(wakes) > 10 else ""
    return f"sequence{'s' if len(wakes) > 1 else ''} {ids}{more}"
