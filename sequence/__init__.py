"""Ordered, durable chains of background jobs for Django, on RQ."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from sequence.exceptions import (
    ConfigurationError,
    Fail,
    ForeignJob,
    InvalidData,
    InvalidTransition,
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
    from sequence.definitions import Schedule, Step
    from sequence.handle import Sequence
    from sequence.items import ForEach, Sleep, WaitFor
    from sequence.retry import Retry

# Names whose modules use the models: imported on first use, so that importing the
# package (as Django does while it loads apps) never imports the models.
_LAZY = {
    "Retry": "sequence.retry",
    "Schedule": "sequence.definitions",
    "Step": "sequence.definitions",
    "Sequence": "sequence.handle",
    "ForEach": "sequence.items",
    "Sleep": "sequence.items",
    "WaitFor": "sequence.items",
}

__all__ = [
    "ConfigurationError",
    "Fail",
    "ForEach",
    "ForeignJob",
    "InvalidData",
    "InvalidTransition",
    "Retry",
    "Schedule",
    "Sequence",
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
