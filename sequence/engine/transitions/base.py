"""What every statement of the state machine shares: the row as an action finds it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from django.db.models import QuerySet

from sequence.engine.states import Status, sources
from sequence.models import SequenceRecord

# A claim given up: no holder, no lease.
RELEASED = {"claim_token": None, "claimed_by": "", "claimed_at": None, "lease_until": None}


def rows(action: str, pk: int | str, target: Status | None = None) -> QuerySet[SequenceRecord]:
    """The row, if it is in a status ``action`` may start from (to reach ``target``)."""
    return SequenceRecord.objects.filter(pk=pk, status__in=sources(action, target))


def status_in(statuses: frozenset[Status]) -> tuple[str, list[Any]]:
    """``status IN (...)`` for raw SQL, with its parameters."""
    ordered = sorted(statuses)
    return f"status IN ({', '.join(['%s'] * len(ordered))})", list(ordered)


class Then(StrEnum):
    """What a move of an element leaves its caller to do."""

    GO_ON = "go_on"  # other elements run on: nothing to do
    RETRY = "retry"  # RQ runs the element's job again
    REQUEUE = "requeue"  # queue the element's job again
    FINISH = "finish"  # the last element is done: move the sequence on
    FAIL = "fail"  # the last in flight after one failed for good: fail the sequence
