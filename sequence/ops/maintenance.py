"""Beside the worker: its liveness beats in the database, and a thread that wakes
sleepers, releases orphaned claims, starts due schedules and runs the recovery sweep
(once per interval across the fleet)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from django.db import close_old_connections, connection
from django.db.models.functions import Now

from sequence.declare.conf import settings
from sequence.declare.registry import registered
from sequence.engine import release
from sequence.engine.recovery import recover_worker, sweep
from sequence.engine.schedules import run_due
from sequence.engine.waiting import wake_due
from sequence.models import WorkerBeat

logger = logging.getLogger("sequence")

# Redis key that lets one worker in the fleet sweep per interval.
SWEEP_LOCK = "sequence:sweep-lock"

# Held by the maintenance thread while it works, and by the forking worker around each
# fork: a work-horse forked while that thread is inside a database driver or SQLite
# would inherit a mutex no thread of its own will release, and hang at its first query.
fork_guard = threading.Lock()


def register(name: str, queue_names: list[str]) -> None:
    """Record a worker as alive; claims an earlier process of that name held are taken back.

    Without beats (SEQUENCE_WORKER_HEARTBEAT = 0) no row is kept: a row that never beats
    would soon make the worker look dead.
    """
    recover_worker(name, reason=f"worker {name} restarted while it held the step")
    if not settings.WORKER_HEARTBEAT:
        WorkerBeat.objects.filter(name=name).delete()
        return
    WorkerBeat.objects.update_or_create(
        name=name,
        defaults={
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "queues": ",".join(queue_names)[:255],
            "started_at": Now(),
            "last_seen": Now(),
            "stopped_at": None,
        },
    )


def beat(name: str) -> None:
    """Show the worker is alive (database clock)."""
    if not WorkerBeat.objects.filter(name=name).update(last_seen=Now(), stopped_at=None):
        # Registration failed (the database was down when the worker started).
        WorkerBeat.objects.get_or_create(
            name=name,
            defaults={
                "host": socket.gethostname()[:255],
                "pid": os.getpid(),
                "started_at": Now(),
                "last_seen": Now(),
            },
        )


def unregister(name: str) -> None:
    """Record that the worker stopped: the sweep takes back any claim it still held."""
    WorkerBeat.objects.filter(name=name).update(last_seen=Now(), stopped_at=Now())


class Maintenance(threading.Thread):
    """Beside the worker: liveness beats, releasing orphaned claims, schedules and the sweep.

    Beats go every SEQUENCE_WORKER_HEARTBEAT seconds (0: none). Sleepers whose time came
    are woken every SEQUENCE_WAKE_INTERVAL seconds (0: never), by every worker (a row
    wakes once however many try). The sweep runs every SEQUENCE_RECOVER_INTERVAL seconds
    (0: never) in one worker of the fleet, which takes a short Redis lock for the
    interval; if Redis is unreachable it sweeps anyway.
    """

    def __init__(
        self,
        name: str,
        *,
        heartbeat: float,
        sweep_interval: float,
        lock: Any,
        wake_interval: float = 0,
    ) -> None:
        super().__init__(name="sequence-maintenance", daemon=True)
        self.worker_name = name
        self.heartbeat = heartbeat
        self.wake_interval = wake_interval
        self.next_beat = 0.0
        self.sweep_interval = sweep_interval
        self.lock = lock
        self.stopped = threading.Event()
        # Starting a tick twice returns the first sequence (its start key), so every
        # worker may look for due ticks without a lock.
        self.schedules = any(cls.schedules for cls in registered().values())

    def run(self) -> None:
        intervals = (self.heartbeat, self.sweep_interval, self.wake_interval, 5.0)
        tick = min(x for x in intervals if x > 0)
        next_sweep = time.monotonic() + min(self.sweep_interval, tick)
        try:
            while not self.stopped.wait(tick):
                with fork_guard:
                    next_sweep = self._tick(next_sweep)
        finally:
            with fork_guard:
                connection.close()

    def _tick(self, next_sweep: float) -> float:
        """One round of the thread's work; returns when the next sweep is due."""
        close_old_connections()
        if self.heartbeat and time.monotonic() >= self.next_beat:
            self.next_beat = time.monotonic() + self.heartbeat
            self._guard("liveness beat", beat, self.worker_name)
        if self.wake_interval:
            self._guard("waking sleepers", wake_due)
        if release.orphans:
            self._guard("releasing orphaned claims", release.release_orphans)
        if self.schedules:
            self._guard("cron schedules", run_due)
        if self.sweep_interval and time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + self.sweep_interval
            if self._my_turn():
                self._guard("recovery sweep", _sweep)
                # A sweep's statements differ in shape (IN lists of any length) and
                # SQLite's driver keeps each one prepared, 128 per connection: closing
                # drops them, and the page cache the sweep filled.
                connection.close()
        return next_sweep

    def _guard(self, what: str, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except Exception:
            logger.exception("Worker %s: %s failed; trying again soon.", self.worker_name, what)
            # A broken connection must not poison the next round.
            connection.close()

    def _my_turn(self) -> bool:
        try:
            ttl = max(1, int(self.sweep_interval * 1000) - 100)
            return bool(self.lock.set(SWEEP_LOCK, self.worker_name, nx=True, px=ttl))
        except Exception:
            return True


# KiB of SQLite page cache the maintenance thread's connection may keep (default 2,000).
SWEEP_PAGE_CACHE = 256


def _sweep() -> None:
    if connection.vendor == "sqlite":
        # The sweep reads each page once per batch, and SQLite empties a connection's page
        # cache whenever another connection wrote since its last read (every step does).
        # A full default cache would only stay behind with this thread's allocator.
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA cache_size = -{SWEEP_PAGE_CACHE}")
    sweep()
