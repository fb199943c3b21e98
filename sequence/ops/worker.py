"""The recommended worker: JSON payloads, the allow-listing job class, no fork per job.

``run_worker`` (``manage.py sequence worker``) adds what keeps sequences moving through
faults: a maintenance thread that records the worker's liveness beats in the database
and runs the recovery sweep (once per interval across all workers), fast takeover of a
forked work-horse's step when the horse dies, and a restart of RQ's work loop when it
ends because Redis went away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any

import redis.exceptions
from django.db import close_old_connections, connections
from rq import SimpleWorker, Worker
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty, JobTimeoutException, UnixSignalDeathPenalty
from rq.worker import BaseWorker

from sequence.declare.conf import settings
from sequence.engine import claims, tracing
from sequence.engine.inline import Inline
from sequence.engine.recovery import recover_claim
from sequence.engine.rq.dispatch import get_queue
from sequence.engine.rq.wakes import wake_pass
from sequence.jobs import SequenceJob
from sequence.ops import checks, faults
from sequence.ops.maintenance import Maintenance, fork_guard, register, unregister

logger = logging.getLogger("sequence")


class DeadlineDeathPenalty(UnixSignalDeathPenalty):
    """RQ's job timeout, which also tells the runner it fired (a step may swallow it)."""

    def handle_death_penalty(self, signum: Any, frame: Any) -> None:
        if self._exception is JobTimeoutException:
            claims.job_timeout.fired = True
        super().handle_death_penalty(signum, frame)  # type: ignore[no-untyped-call]


# Seconds RQ's pub/sub thread (which takes commands such as stop-job) waits in one read.
# RQ waits 60, and from redis-py 8.2 on, stopping the thread waits for that read to end:
# once unsubscribed, it is a wait for a subscription that never comes, so a worker told
# to stop could hang for a minute. A short read bounds the stop, at no cost to Redis
# (a read that times out sends nothing).
PUBSUB_READ = 0.25
# Seconds RQ's scheduler process is given to stop on SIGTERM before it is killed.
SCHEDULER_GRACE = 0.2


class _SequenceWorkerMixin:
    """Database hygiene around every job, the job's claim token from RQ's execution, and
    a stop on time whatever the redis-py version."""

    name: str
    execution: Any
    connection: Any
    pubsub: Any
    pubsub_thread: Any
    pubsub_channel_name: str
    death_penalty_class: type[BaseDeathPenalty] = DeadlineDeathPenalty

    def subscribe(self) -> None:
        """RQ's subscription to the worker's command channel, read in short waits."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})  # type: ignore[attr-defined]
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=PUBSUB_READ,
            daemon=True,
            exception_handler=getattr(self, "_pubsub_exception_handler", None),
        )

    def unsubscribe(self) -> None:
        """Stop the command thread within one short read; closing its connection ends the
        subscription (RQ unsubscribes first, which is what let the thread wait a minute)."""
        thread, self.pubsub_thread = self.pubsub_thread, None
        if thread is None:
            return
        thread.stop()  # redis-py 8.2 and later wait here for the read in progress
        thread.join(timeout=2 * PUBSUB_READ)  # earlier ones do not
        self.pubsub.close()

    def stop_scheduler(self) -> None:
        """Stop RQ's scheduler process within a fraction of a second.

        It sleeps a second between its passes and reads SIGTERM only after, so RQ's own
        stop waits up to that second. Still running after ``SCHEDULER_GRACE``, it is
        killed (a pass moves its jobs in one MULTI/EXEC, so none is half moved) and its
        locks, held under its name, are released here, so another worker's scheduler
        can take over at once."""
        scheduler: Any = getattr(self, "scheduler", None)
        process = getattr(scheduler, "_process", None)
        if process is None or not process.pid:
            return
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(SCHEDULER_GRACE)
        if not process.is_alive():
            return
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGKILL)
        process.join()
        try:
            # Every lock it may have taken since it started, not only those taken here.
            scheduler._acquired_locks = set(scheduler._queue_names)
            scheduler.release_locks()
            scheduler.register_death()
        except redis.exceptions.RedisError:
            logger.warning("Worker %s: could not release its scheduler's locks.", self.name)

    def perform_job(self, job: Any, queue: Any) -> bool:
        claims.job_timeout.fired = False
        close_old_connections()
        execution = getattr(self, "execution", None)
        reset = claims.execution.set(
            claims.Execution(
                worker=self.name,
                token=execution.id if execution else None,
                inline=self._inline() if settings.INLINE_STEPS else None,
            )
        )
        try:
            return super().perform_job(job, queue)  # type: ignore[misc, no-any-return]
        finally:
            claims.execution.reset(reset)
            close_old_connections()

    def _inline(self) -> Any:
        """What lets a job run the next steps itself; None where they must be jobs."""
        return None


class SequenceWorker(_SequenceWorkerMixin, SimpleWorker):
    """Runs step jobs in the worker process, keeping its database connection between jobs."""

    def _inline(self) -> Any:
        # A step run inline gets its own full timeout: RQ's alarm is set again for it.
        return Inline(rearm=signal.alarm, stopping=lambda: self._stop_requested)


class ForkingSequenceWorker(_SequenceWorkerMixin, Worker):
    """Forks a work-horse per job, as RQ's default worker does: slower, isolates each step."""

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        # A database connection must not cross a fork: the horse would share the
        # parent's socket or SQLite handle. Each side opens its own when it needs one.
        # The horse never returns from here (RQ ends it with os._exit), so only the
        # parent releases the guard.
        with fork_guard:
            connections.close_all()
            super().fork_work_horse(job, queue)

    def perform_job(self, job: Any, queue: Any) -> bool:
        # In the horse, which RQ ends with os._exit: its spans must leave before it does.
        try:
            return super().perform_job(job, queue)
        finally:
            tracing.flush()

    def handle_work_horse_killed(self, job: Any, retpid: Any, ret_val: Any, rusage: Any) -> None:
        """Take the dead horse's step back at once, fenced by the horse's claim token."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[no-untyped-call]
        execution = getattr(self, "execution", None)
        if execution is None:
            return
        try:
            sequence_id, epoch = job.args[0], job.args[2]
            signal = (
                f" (signal {os.WTERMSIG(ret_val)})" if ret_val and os.WIFSIGNALED(ret_val) else ""
            )
            close_old_connections()
            recover_claim(
                int(sequence_id), int(epoch), execution.id,
                reason=f"work-horse {retpid} of worker {self.name} died{signal}",
            )  # fmt: skip
        except Exception:
            logger.exception("Could not take back the step of dead work-horse %s", retpid)


WORKER_CLASSES: dict[str, type[BaseWorker]] = {
    "simple": SequenceWorker,
    "fork": ForkingSequenceWorker,
}


def build_worker(queue_names: list[str], kind: str = "simple", **kwargs: Any) -> BaseWorker:
    """A worker on ``queue_names`` that only runs sequence steps, with JSON payloads."""
    queues = [get_queue(name) for name in queue_names]
    return WORKER_CLASSES[kind](
        queues,
        connection=queues[0].connection,
        job_class=SequenceJob,
        serializer=JSONSerializer,
        **kwargs,
    )


def run_worker(
    queue_names: list[str], *, kind: str = "simple", burst: bool = False, **kwargs: Any
) -> None:
    """Work on ``queue_names`` with the scheduler (for retry delays), beats and the sweep."""
    if settings.TEST_POINTS:
        faults.install(settings.TEST_POINTS)
    checks.log_deployment_warnings(queue_names)
    stop = threading.Event()
    first = _build_when_possible(queue_names, kind, kwargs, 0, stop)
    if first is None:
        return
    worker = first
    register(worker.name, queue_names)
    maintenance = Maintenance(
        worker.name,
        heartbeat=float(settings.WORKER_HEARTBEAT or 0),
        sweep_interval=0 if burst else float(settings.RECOVER_INTERVAL or 0),
        lock=worker.connection,
        wake_interval=0 if burst else float(settings.WAKE_INTERVAL or 0),
    )
    if (
        maintenance.heartbeat
        or maintenance.sweep_interval
        or maintenance.schedules
        or maintenance.wake_interval
    ):
        maintenance.start()
    # This process wakes its sequences itself: no wake-up jobs in Redis.
    wake_pass.running = bool(maintenance.wake_interval)
    restarts = 0
    try:
        while True:
            try:
                worker.work(burst=burst, with_scheduler=True)
            except Exception:
                logger.exception("Worker %s stopped on an error.", worker.name)
            # An idle worker told to stop leaves RQ's loop without setting _stop_requested.
            if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
                return
            # RQ's loop ends on its own when Redis goes away mid-job: start a fresh one
            # (under a new name: RQ may still see the old one as alive).
            restarts += 1
            previous = worker
            rebuilt = _build_when_possible(queue_names, kind, kwargs, restarts, stop)
            if rebuilt is None:
                return
            worker = rebuilt
            try:
                unregister(previous.name)
                register(worker.name, queue_names)
            except Exception:
                logger.exception("Worker %s: could not record its restart.", worker.name)
            maintenance.worker_name = worker.name
            maintenance.lock = worker.connection
    finally:
        maintenance.stopped.set()
        wake_pass.running = False
        try:
            close_old_connections()
            unregister(worker.name)
        except Exception:
            logger.exception("Worker %s: could not record that it stopped.", worker.name)


def _build_when_possible(
    queue_names: list[str], kind: str, kwargs: dict[str, Any], restarts: int, stop: threading.Event
) -> BaseWorker | None:
    """Build the worker, waiting for Redis while it is unreachable; None if told to stop."""
    options = dict(kwargs)
    if restarts and options.get("name"):
        options["name"] = f"{kwargs['name']}.{restarts}"
    elif restarts:
        options.pop("name", None)
    delay = 0.25 if restarts else 0.0
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(delay):
            try:
                return build_worker(queue_names, kind, **options)
            except redis.exceptions.ConnectionError as exc:
                delay = min(5.0, max(0.25, delay * 2))
                logger.warning(
                    "Redis is unreachable (%s); starting the worker in %.1fs.", exc, delay
                )
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
