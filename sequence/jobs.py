"""The RQ side of a step job: the allow-listing job class and the failure callback.

Workers (``sequence worker``, or ``rqworker --job-class sequence.jobs.SequenceJob``) run
step jobs through this class, which refuses any job that names another function.
"""

from __future__ import annotations

import logging
from typing import Any

from rq.job import Job

from sequence.dispatch import ENTRY_POINT, FAILURE_CALLBACK
from sequence.exceptions import ForeignJob
from sequence.recovery import check_sequence
from sequence.runner import run_step

logger = logging.getLogger("sequence")


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
        return run_step

    @property
    def success_callback(self) -> Any:
        return self._no_callback("_success_callback_name")

    @property
    def failure_callback(self) -> Any:
        if getattr(self, "_failure_callback_name", None) == FAILURE_CALLBACK:
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
        sequence_id, epoch = job.args[0], job.args[2]
        check_sequence(int(sequence_id), int(epoch), reason=f"RQ found job {job.id} abandoned")
    except Exception:
        # Raising here would stop RQ's registry cleanup; the sweep will look again.
        logger.exception("Checking the sequence of abandoned job %s failed", job.id)
