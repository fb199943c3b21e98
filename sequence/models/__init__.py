"""The records: a sequence's row (``records``) and the rows beside it (``rows``).

``SequenceRecord`` is public: filter it like any model.
"""

from __future__ import annotations

from sequence.engine.states import ItemStatus
from sequence.models.records import (
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
from sequence.models.rows import SequenceEvent, SequenceItem, StepAttempt, WorkerBeat

__all__ = [
    "NOT_MIGRATED",
    "VERBS",
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
