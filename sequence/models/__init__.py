"""The records: a sequence's row (``records``) and the rows beside it (``rows``).

``SequenceRecord`` is public: filter it like any model.
"""

from __future__ import annotations

from sequence.engine.states import ItemStatus
from sequence.models.records import (
    LIVE,
    NOT_MIGRATED,
    VERBS,
    Position,
    Progress,
    SequenceQuerySet,
    SequenceRecord,
    ago,
    not_migrated,
    subject_of,
)
from sequence.models.rows import FlowLock, SequenceEvent, SequenceItem, StepAttempt, WorkerBeat

__all__ = [
    "LIVE",
    "NOT_MIGRATED",
    "VERBS",
    "FlowLock",
    "ItemStatus",
    "Position",
    "Progress",
    "SequenceEvent",
    "SequenceItem",
    "SequenceQuerySet",
    "SequenceRecord",
    "StepAttempt",
    "WorkerBeat",
    "ago",
    "not_migrated",
    "subject_of",
]
