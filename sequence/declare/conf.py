"""The ``SEQUENCE_*`` settings: each default written once, with its type, read lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings

if TYPE_CHECKING:
    from sequence.declare.retry import Retry


class Defaults:
    """Every setting's default; ``SEQUENCE_<NAME>`` in the project's settings overrides it."""

    # Queue used when neither the step nor the sequence names one.
    QUEUE: str = "default"
    # Retries of a failing step: a Retry, a dict of its arguments, or a number of retries.
    RETRY: Retry | dict[str, Any] | int = {"max": 3, "interval": [1, 10, 60]}
    # Seconds a step may run; it becomes the RQ job timeout.
    TIMEOUT: int = 300
    # Steps ``sequence worker`` may run right after a commit in the same RQ job, without
    # a round trip through Redis (0: every step is its own job). Bounded by the time below.
    INLINE_STEPS: int = 0
    # Seconds into a job after which no further step starts inline.
    INLINE_SECONDS: float = 1.0
    # Seconds a claim outlives the step's timeout; RQ hard-kills a horse at timeout + 60.
    LEASE_MARGIN: int = 90
    # Most elements a ForEach takes from its list; a longer list fails the sequence.
    MAX_ITEMS: int = 100_000
    # Largest data, in bytes of JSON, a sequence may hold.
    MAX_DATA_BYTES: int = 1_000_000
    # Largest change to the data, in bytes of JSON, a history row keeps with its values;
    # a larger one keeps only the keys it added, changed and removed.
    HISTORY_CHANGE_LIMIT: int = 8192
    # Seconds a dispatch may stay unconfirmed before the sweep queues it again.
    DISPATCH_GRACE: int = 30
    # Times the sweep may recover one step before the sequence is failed.
    MAX_RECOVERIES: int = 3
    # Seconds between recovery sweeps run by ``sequence worker``; 0 turns them off.
    RECOVER_INTERVAL: int = 60
    # Seconds between a worker's liveness beats (database clock); 0 turns them off, and
    # a dead worker's step then waits for its lease to run out.
    WORKER_HEARTBEAT: float = 5
    # Seconds without a beat after which the sweep takes over a worker's step.
    WORKER_DEAD_AFTER: float = 30
    # Seconds between a worker's passes that wake sleepers whose time came (and time out
    # waits past their deadline); 0 turns them off (the recovery sweep still wakes them).
    WAKE_INTERVAL: float = 0.5
    # Rows the sweep reads (and jobs it looks up in Redis, pipelined) per batch.
    SWEEP_BATCH: int = 500
    # Test points to arm in worker processes (see sequence.engine.points); None in production.
    TEST_POINTS: dict[str, Any] | None = None
    # Seconds RQ keeps a finished step job; 0 deletes it at once.
    RESULT_TTL: int = 0
    # Seconds RQ keeps a step job that failed for good in its failed registry (the
    # database keeps every attempt and its traceback).
    FAILED_TTL: int = 7 * 86400
    # Seconds after its time a schedule tick may still start (covers scheduler restarts).
    SCHEDULE_WINDOW: int = 300
    # Bearer token that opens /metrics (sequence.ops.urls) to a scraper that is not logged
    # in as staff, as django-rq's RQ_API_TOKEN does; "" lets only staff in.
    METRICS_TOKEN: str = ""
    # For test settings: queue nothing in Redis; ``sequence.testing.drain()`` runs what
    # the rows say is due, in the test's own process.
    TESTING: bool = False
    # Dotted paths of other functions ``SequenceJob`` may run, for a queue shared with
    # other jobs (exact names, no wildcards); callbacks they name must be listed too.
    ALLOWED_JOBS: list[str] = []


class Settings(Defaults):
    """Read a ``SEQUENCE_<NAME>`` setting, falling back to its default."""

    def __getattribute__(self, name: str) -> Any:
        if name.isupper():
            return getattr(django_settings, f"SEQUENCE_{name}", getattr(Defaults, name))
        return object.__getattribute__(self, name)


def names() -> list[str]:
    """The names of every setting, without the ``SEQUENCE_`` prefix (checked by
    ``sequence.ops.checks.check_settings``)."""
    return [name for name in vars(Defaults) if name.isupper()]


settings = Settings()
