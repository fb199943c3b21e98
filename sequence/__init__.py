"""Ordered, durable chains of background jobs for Django, on RQ."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sequence.declare.exceptions import (
    ConfigurationError,
    Fail,
    ForeignJob,
    InvalidData,
    InvalidTransition,
    SequenceBusy,
    SequenceCanceled,
    SequenceError,
    SequenceFailed,
    SequenceTimeout,
    StepDeadlineExceeded,
    StepFenced,
    UnknownSequence,
    UnreadableJob,
)

if TYPE_CHECKING:
    from sequence.declare.definitions import Step
    from sequence.declare.flow import Concurrency
    from sequence.declare.items import ForEach, Sleep, WaitFor
    from sequence.declare.retry import Retry
    from sequence.declare.schedule import Schedule
    from sequence.engine.handle import Sequence

# Names whose modules use the models: imported on first use, so that importing the
# package (as Django does while it loads apps) never imports the models.
_LAZY = {
    "Concurrency": "sequence.declare.flow",
    "Retry": "sequence.declare.retry",
    "Schedule": "sequence.declare.schedule",
    "Step": "sequence.declare.definitions",
    "Sequence": "sequence.engine.handle",
    "ForEach": "sequence.declare.items",
    "Sleep": "sequence.declare.items",
    "WaitFor": "sequence.declare.items",
}

__all__ = [
    "Concurrency",
    "ConfigurationError",
    "Fail",
    "ForEach",
    "ForeignJob",
    "InvalidData",
    "InvalidTransition",
    "Retry",
    "Schedule",
    "Sequence",
    "SequenceBusy",
    "SequenceCanceled",
    "SequenceError",
    "SequenceFailed",
    "SequenceTimeout",
    "Sleep",
    "Step",
    "StepDeadlineExceeded",
    "StepFenced",
    "UnknownSequence",
    "UnreadableJob",
    "WaitFor",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sequence' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
