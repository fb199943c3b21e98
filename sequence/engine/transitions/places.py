"""Places under a ``Concurrency``: queued sequences admitted, first come first served."""

from __future__ import annotations

from django.db.models import F
from django.db.models.functions import Now

from sequence.engine.states import Status, sources
from sequence.models import SequenceRecord


def admit(name: str, key: str, places: int) -> list[int]:
    """The first ``places`` queued sequences of ``name`` under ``key``, pending now with
    their step due (queued by the caller after the commit); their ids.

    The caller holds the key's lock, so no other admission counts these places. A row
    paused or canceled between the read and the update is skipped; it is not admitted.
    """
    ids = list(
        SequenceRecord.objects.filter(name=name, flow_key=key, status__in=sources("admit"))
        .order_by("id")
        .values_list("pk", flat=True)[:places]
    )
    if not ids:
        return []
    admitted = SequenceRecord.objects.filter(pk__in=ids, status__in=sources("admit"))
    if admitted.update(
        status=Status.PENDING, has_place=True, epoch=F("epoch") + 1, dispatch_due=Now(),
        updated_at=Now(),
    ) == len(ids):  # fmt: skip
        return ids
    return list(
        SequenceRecord.objects.filter(
            pk__in=ids, status=Status.PENDING, has_place=True
        ).values_list("pk", flat=True)
    )
