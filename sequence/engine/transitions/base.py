"""What every statement of the state machine shares: the row as an action finds it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from django.db.models import QuerySet
from django.db.models.functions import Now

from sequence.engine.states import Status, sources
from sequence.models import Position, SequenceRecord

# A claim given up: no holder, no lease.
RELEASED = {"claim_token": None, "claimed_by": "", "claimed_at": None, "lease_until": None}


def rows(action: str, pk: int | str, target: Status | None = None) -> QuerySet[SequenceRecord]:
    """The row, if it is in a status ``action`` may start from (to reach ``target``)."""
    return SequenceRecord.objects.filter(pk=pk, status__in=sources(action, target))


def compensating(start: Position, ends_as: Status) -> dict[str, Any]:
    """The fields of a sequence whose compensation walk begins at ``start`` (the plan
    index, and the element in a ForEach), its first compensation due now, to end
    ``ends_as``: one statement's fields, whoever begins the walk (a step or an element
    failed for good, a cancel with compensate=True, a wait's timeout, the sweep)."""
    return {
        "status": Status.COMPENSATING, "undo_index": start[0], "undo_item": start[1],
        "ends_as": ends_as, "attempt": 0, "recoveries": 0, "dispatch_due": Now(),
    }  # fmt: skip


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
