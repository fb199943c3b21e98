"""The recommended worker: JSON payloads, the allow-listing job class, no fork per job."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.db import close_old_connections
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer

from sequence.conf import settings
from sequence.dispatch import SequenceJob, get_queue

logger = logging.getLogger("sequence")


class _DatabaseHygiene:
    """Drop broken or expired database connections around every job, as Django does per request."""

    def perform_job(self, job: Any, queue: Any) -> bool:
        close_old_connections()
        try:
            return super().perform_job(job, queue)  # type: ignore[misc, no-any-return]
        finally:
            close_old_connections()


class SequenceWorker(_DatabaseHygiene, SimpleWorker):
    """Runs step jobs in the worker process, keeping its database connection between jobs."""


class ForkingSequenceWorker(_DatabaseHygiene, Worker):
    """Forks a work-horse per job, as RQ's default worker does: slower, isolates each step."""


WORKER_CLASSES: dict[str, type[Worker]] = {
    "simple": SequenceWorker,
    "fork": ForkingSequenceWorker,
}


def build_worker(queue_names: list[str], kind: str = "simple", **kwargs: Any) -> Worker:
    """A worker on ``queue_names`` that only runs sequence steps, with JSON payloads."""
    queues = [get_queue(name) for name in queue_names]
    return WORKER_CLASSES[kind](
        queues,
        connection=queues[0].connection,
        job_class=SequenceJob,
        serializer=JSONSerializer,
        **kwargs,
    )


class RecoveryLoop(threading.Thread):
    """Runs the recovery sweep every SEQUENCE_RECOVER_INTERVAL seconds beside the worker."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="sequence-recovery", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        from sequence.recovery import sweep

        while not self.stopped.wait(self.interval):
            try:
                close_old_connections()
                sweep()
            except Exception:
                logger.exception("Recovery sweep failed; trying again in %ss", self.interval)


def run_worker(
    queue_names: list[str], *, kind: str = "simple", burst: bool = False, **kwargs: Any
) -> None:
    """Work on ``queue_names`` with the scheduler (for retry delays) and the sweep."""
    worker = build_worker(queue_names, kind, **kwargs)
    loop = None
    if settings.RECOVER_INTERVAL and not burst:
        loop = RecoveryLoop(settings.RECOVER_INTERVAL)
        loop.start()
    try:
        worker.work(burst=burst, with_scheduler=True)
    finally:
        if loop is not None:
            loop.stopped.set()
