"""Ordered, durable chains of background jobs for Django, on RQ."""

from __future__ import annotations

from sequence.definitions import Retry, Schedule, Sequence, Step
from sequence.exceptions import (
    ConfigurationError,
    InvalidData,
    InvalidTransition,
    SequenceCanceled,
    SequenceError,
    SequenceFailed,
    SequenceTimeout,
    UnknownSequence,
)

__all__ = [
    "ConfigurationError",
    "InvalidData",
    "InvalidTransition",
    "Retry",
    "Schedule",
    "Sequence",
    "SequenceCanceled",
    "SequenceError",
    "SequenceFailed",
    "SequenceTimeout",
    "Step",
    "UnknownSequence",
]
