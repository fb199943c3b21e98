"""Queueing step jobs: the queues, deterministic job ids, and the allow-listing job class."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache
from typing import Any

from rq import Callback, Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from sequence.conf import settings
from sequence.definitions import Retry, StepSpec
from sequence.exceptions import ForeignJob

logger = logging.getLogger("sequence")

ENTRY_POINT = "sequence.runner.run_step"
# The only callback a step job may name: it checks an abandoned job's sequence at once.
FAILURE_CALLBACK = "sequence.runner.job_failed"


class SequenceJob(Job):
    """An RQ job that runs only ``sequence``'s entry point.

    The function and callbacks named in a job's payload are checked before anything is
    imported, so a worker using this class never resolves a dotted path from Redis.
    """

    @property
    def func(self) -> Any:
        if self.func_name != ENTRY_POINT or self.instance is not None:
            raise ForeignJob(
                f"Refusing job {self.id!r}: it names {self.func_name!r}, and this worker "
                f"runs only {ENTRY_POINT!r}."
            )
        from sequence.runner import run_step

        return run_step

    @property
    def success_callback(self) -> Any:
        return self._no_callback("_success_callback_name")

    @property
    def failure_callback(self) -> Any:
        if getattr(self, "_failure_callback_name", None) == FAILURE_CALLBACK:
            from sequence.runner import job_failed

            return job_failed
        return self._no_callback("_failure_callback_name")

    @property
    def stopped_callback(self) -> Any:
        return self._no_callback("_stopped_callback_name")

    def cleanup(
        self, ttl: int | None = None, pipeline: Any = None, remove_from_queue: bool = True
    ) -> None:
        """Delete a finished step job (SEQUENCE_RESULT_TTL = 0) in the worker's pipeline.

        RQ's own ``delete()`` reads the job's status and executions back from Redis
        first: nine more round trips per step (bench/, rq 2.12). A finished job's
        execution is already cleaned up by the worker; only its keys remain.
        """
        if ttl == 0 and pipeline is not None and self.get_status(refresh=False) == "finished":
            pipeline.delete(
                self.key, self.dependents_key, self.dependencies_key, self.execution_registry.key
            )
            return
        super().cleanup(ttl, pipeline, remove_from_queue)

    def _no_callback(self, attribute: str) -> None:
        name = getattr(self, attribute, None)
        if name:
            raise ForeignJob(f"Refusing job {self.id!r}: it names the callback {name!r}.")


def job_id(sequence_id: int, step_index: int, epoch: int) -> str:
    """The id of the job that runs ``step_index`` of a sequence under ``epoch``."""
    return f"seq-{sequence_id}-{step_index}-{epoch}"


@cache
def get_queue(name: str) -> Queue:
    """The RQ queue ``name`` from ``RQ_QUEUES``, with JSON payloads and the job class."""
    import django_rq

    connection = django_rq.get_connection(name)
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=SequenceJob)


def enqueue_step(
    sequence_id: int,
    step_index: int,
    epoch: int,
    queue: str,
    spec: StepSpec | None,
    *,
    retry: Retry | None = None,
    delay: int = 0,
) -> None:
    """Queue one step job. Safe to repeat: the job id names the step and epoch."""
    rq_queue = get_queue((spec and spec.cls.queue) or queue)
    options: dict[str, Any] = {
        "args": (sequence_id, step_index, epoch),
        "job_id": job_id(sequence_id, step_index, epoch),
        "retry": (retry or retry_of(spec)).to_rq(),
        "result_ttl": settings.RESULT_TTL,
        "description": f"sequence {sequence_id} step {step_index}",
        "on_failure": Callback(FAILURE_CALLBACK),
    }
    timeout = timeout_of(spec)
    if delay:
        rq_queue.enqueue_in(timedelta(seconds=delay), ENTRY_POINT, job_timeout=timeout, **options)
    else:
        rq_queue.enqueue_call(ENTRY_POINT, timeout=timeout, **options)


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
) -> bool:
    """Queue a due step and clear its outbox entry; False leaves it for the sweep.

    With ``confirm=False`` the entry stays: the step's claim clears it, or the sweep
    once it sees the job in RQ. The runner passes it to save a write per step.
    """
    from sequence.models import SequenceRecord

    try:
        enqueue_step(sequence_id, step_index, epoch, queue, spec)
    except Exception:
        logger.exception(
            "Could not queue step %s of sequence %s; the recovery sweep will.",
            step_index,
            sequence_id,
        )
        return False
    if not confirm:
        return True
    SequenceRecord.objects.filter(pk=sequence_id, epoch=epoch, dispatch_due__isnull=False).update(
        dispatch_due=None
    )
    return True
