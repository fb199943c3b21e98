"""The ``SEQUENCE_*`` settings, each default written once, read lazily."""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # Queue used when neither the step nor the sequence names one.
    "QUEUE": "default",
    # Retries of a failing step: a Retry, or a dict of its arguments.
    "RETRY": {"max": 3, "interval": [1, 10, 60]},
    # Seconds a step may run; it becomes the RQ job timeout.
    "TIMEOUT": 300,
    # Steps ``sequence worker`` may run right after a commit in the same RQ job, without
    # a round trip through Redis (0: every step is its own job). Bounded by the time below.
    "INLINE_STEPS": 0,
    # Seconds into a job after which no further step starts inline.
    "INLINE_SECONDS": 1.0,
    # Seconds a claim outlives the step's timeout; RQ hard-kills a horse at timeout + 60.
    "LEASE_MARGIN": 90,
    # Largest data, in bytes of JSON, a sequence may hold.
    "MAX_DATA_BYTES": 1_000_000,
    # Seconds a dispatch may stay unconfirmed before the sweep queues it again.
    "DISPATCH_GRACE": 30,
    # Times the sweep may recover one step before the sequence is failed.
    "MAX_RECOVERIES": 3,
    # Seconds between recovery sweeps run by ``sequence worker``; 0 turns them off.
    "RECOVER_INTERVAL": 60,
    # Seconds between a worker's liveness beats (database clock); 0 turns them off, and
    # a dead worker's step then waits for its lease to run out.
    "WORKER_HEARTBEAT": 5,
    # Seconds without a beat after which the sweep takes over a worker's step.
    "WORKER_DEAD_AFTER": 30,
    # Rows the sweep reads (and jobs it looks up in Redis, pipelined) per batch.
    "SWEEP_BATCH": 500,
    # Test points to arm in worker processes (see sequence.testing); None in production.
    "TEST_POINTS": None,
    # Seconds RQ keeps a finished step job; 0 deletes it at once.
    "RESULT_TTL": 0,
    # Seconds after its time a schedule tick may still start (covers scheduler restarts).
    "SCHEDULE_WINDOW": 300,
    # Bearer token that opens /metrics (sequence.urls) to a scraper that is not logged
    # in as staff, as django-rq's RQ_API_TOKEN does; "" lets only staff in.
    "METRICS_TOKEN": "",
}


class Settings:
    """Read a ``SEQUENCE_<NAME>`` setting, falling back to its default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(name)
        return getattr(django_settings, f"SEQUENCE_{name}", DEFAULTS[name])

    QUEUE: str
    RETRY: Any
    TIMEOUT: int
    INLINE_STEPS: int
    INLINE_SECONDS: float
    LEASE_MARGIN: int
    MAX_DATA_BYTES: int
    DISPATCH_GRACE: int
    MAX_RECOVERIES: int
    RECOVER_INTERVAL: int
    WORKER_HEARTBEAT: float
    WORKER_DEAD_AFTER: float
    SWEEP_BATCH: int
    TEST_POINTS: Any
    RESULT_TTL: int
    SCHEDULE_WINDOW: int
    METRICS_TOKEN: str


settings = Settings()
