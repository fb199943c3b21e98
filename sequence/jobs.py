"""The RQ side of a step job: the allow-listing job class and the failure callback.

Workers (``sequence worker``, or ``rqworker --job-class sequence.jobs.SequenceJob``) run
step jobs through this class, which refuses any job that names another function than
the entry point or one listed in ``SEQUENCE_ALLOWED_JOBS``.

A worker that reads payloads with pickle (django-rq's ``rqworker`` without
``--serializer``, RQ's default) cannot read a step job, and RQ fails it before any of
our code runs. The two places we see it: this class's ``func`` (the job class was
right, the serializer not), and the failure callback, which RQ resolves from a plain
field of the job, so even a worker with RQ's own job class calls it. Both raise
``UnreadableJob``, whose message RQ logs and keeps as the job's error.
"""

from __future__ import annotations

import logging
from typing import Any

from rq.exceptions import AbandonedJobError, DeserializationError
from rq.job import Job

from sequence.declare.conf import settings
from sequence.declare.exceptions import ForeignJob, UnreadableJob
from sequence.engine.recovery import check_sequence
from sequence.engine.rq.dispatch import ENTRY_POINT, FAILURE_CALLBACK
from sequence.runner import run_step

logger = logging.getLogger("sequence")


CALLBACKS = ("_success_callback_name", "_failure_callback_name", "_stopped_callback_name")


class SequenceJob(Job):
    """An RQ job that runs only ``sequence``'s entry point.

    The function and callbacks named in a job's payload are checked before anything is
    imported, so a worker using this class never resolves a dotted path from Redis.
    """

    @property
    def func(self) -> Any:
        try:
            name, instance = self.func_name, self.instance
        except DeserializationError as exc:
            raise UnreadableJob(unreadable(self)) from exc
        if name == ENTRY_POINT and instance is None:
            return run_step
        if name in settings.ALLOWED_JOBS and instance is None:
            for attribute in CALLBACKS:  # before the job runs, not after
                self._callback(attribute, None)
            return Job.func.fget(self)  # type: ignore[attr-defined]
        raise ForeignJob(
            f"Refusing job {self.id!r}: it names {name!r}, and this worker runs only "
            f"sequence steps ({ENTRY_POINT!r}) and the functions in SEQUENCE_ALLOWED_JOBS. "
            f"Give sequences a queue of their own, or add {name!r} to SEQUENCE_ALLOWED_JOBS."
        )

    @property
    def success_callback(self) -> Any:
        return self._callback("_success_callback_name", Job.success_callback)

    @property
    def failure_callback(self) -> Any:
        if getattr(self, "_failure_callback_name", None) == FAILURE_CALLBACK:
            return job_failed
        return self._callback("_failure_callback_name", Job.failure_callback)

    @property
    def stopped_callback(self) -> Any:
        return self._callback("_stopped_callback_name", Job.stopped_callback)

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

    def _callback(self, attribute: str, resolve: Any) -> Any:
        """A callback the job names: only one listed in SEQUENCE_ALLOWED_JOBS, else none."""
        name = getattr(self, attribute, None)
        if not name:
            return None
        if name in settings.ALLOWED_JOBS:
            return resolve.fget(self) if resolve is not None else None
        raise ForeignJob(
            f"Refusing job {self.id!r}: it names the callback {name!r}; add it to "
            "SEQUENCE_ALLOWED_JOBS to let this worker run it."
        )


def unreadable(job: Any) -> str:
    """What to do about a step job a worker could not read."""
    serializer = getattr(getattr(job, "serializer", None), "__name__", "its serializer")
    return (
        f"This worker could not read step job {job.id!r} with {serializer}: sequence jobs "
        "are JSON. Run `python manage.py sequence worker`, or give rqworker "
        "`--serializer rq.serializers.JSONSerializer --job-class sequence.jobs.SequenceJob`; "
        f'and set "SERIALIZER": "rq.serializers.JSONSerializer" in '
        f"RQ_QUEUES[{job.origin!r}]. The sequence goes on once a JSON worker takes its step "
        "(the recovery sweep queues it again)."
    )


def job_failed(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ's failure callback: an abandoned job's sequence is checked at once.

    RQ calls this after every failed attempt, which ``run_step`` has already recorded,
    and for a job it found abandoned (its worker stopped sending heartbeats). Only the
    latter matters, and only if the sequence still shows that job's claim as dead by
    the sweep's own rules: a worker wrongly reported as gone changes nothing.
    """
    if isinstance(exc, DeserializationError):
        # A worker that reads pickle: say what to run instead (RQ logs and keeps this).
        raise UnreadableJob(unreadable(job)) from exc
    if exc_type is not AbandonedJobError and not isinstance(exc, AbandonedJobError):
        return
    try:
        sequence_id, epoch = job.args[0], job.args[2]
        check_sequence(int(sequence_id), int(epoch), reason=f"RQ found job {job.id} abandoned")
    except Exception:
        # Raising here would stop RQ's registry cleanup; the sweep will look again.
        logger.exception("Checking the sequence of abandoned job %s failed", job.id)
