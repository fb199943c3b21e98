"""Test points: named places in the step protocol where a test crashes or stalls a worker.

Empty in production: firing a point costs one truthiness check. Tests arm points through
``sequence.ops.faults`` (in their own process) or the ``SEQUENCE_TEST_POINTS`` setting (in
worker processes); the protocol's modules only fire them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

POINTS = (
    # sequence.runner, in the order a step passes them
    "before_claim",  # the job is about to claim its step (each try, if the first lost its connection)
    "after_claim",  # the claim is committed; the step has not started
    "before_commit",  # the step ran; its result is not committed (atomic: inside the transaction)
    "commit_ack",  # the commit is durable; the worker has not yet seen it succeed
    "after_commit",  # committed; the next step is not queued yet (the outbox holds it)
    "after_dispatch",  # the next step is queued and the outbox cleared
    "heartbeat",  # a step called self.heartbeat()
    # sequence.engine.recovery
    "sweep_before_dispatch",  # a recovery is committed; its job is not queued yet
    # sequence.engine.waiting
    "after_wake",  # a wake-up (or a consumed event) is committed; the next step is not queued
)

Context = Mapping[str, Any]
Action = Callable[[Context], None]

# point name -> the action a test armed there.
armed: dict[str, Action] = {}


def fire(name: str, **context: Any) -> None:
    """Run the action a test armed at ``name``, if any."""
    if armed:
        action = armed.get(name)
        if action is not None:
            action(context)
