"""Inline steps (``SEQUENCE_INLINE_STEPS``): when a job may run the next step itself.

Each step run inline is still claimed, committed with its history row and fenced; only
the round trip through Redis is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sequence.declare.conf import settings
from sequence.declare.definitions import StepSpec
from sequence.engine.rq.dispatch import queue_for, retry_of, timeout_of


@dataclass(frozen=True)
class Inline:
    """How a worker lets a job run the next steps of its sequence."""

    rearm: Callable[[int], object]  # restart RQ's job timeout for the next step
    stopping: Callable[[], bool]  # the worker was asked to stop


MayInline = Callable[[StepSpec, str], bool]  # (the step, its sequence's queue)


def policy(inline: Inline | None, job: Any, timeout: int, entered: float) -> MayInline:
    """Whether the job may run a due step itself rather than queue it.

    Only in a worker that lends the means (``SequenceWorker``), for steps of the job's
    own queue whose timeout fits the job's (RQ's registries count on it) and that have
    retries (the last attempt is always an RQ job's), while the worker is not stopping,
    up to INLINE_STEPS steps and INLINE_SECONDS into the job.
    """
    limit = settings.INLINE_STEPS
    if not limit or inline is None or job is None:
        return lambda spec, queue: False
    used = [0]

    def may(spec: StepSpec, queue: str) -> bool:
        if (
            used[0] >= limit
            or time.monotonic() - entered >= settings.INLINE_SECONDS
            or queue_for(spec, queue) != job.origin
            or timeout_of(spec) > timeout
            # Its one attempt would fail for good outside an RQ job of its own, leaving
            # nothing in RQ's failed registry to requeue.
            or retry_of(spec).max == 0
            or inline.stopping()
        ):
            return False
        used[0] += 1
        return True

    return may
