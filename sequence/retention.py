"""Retention: delete finished sequences, and their history, once they are old enough."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from sequence.models import SequenceRecord, StepAttempt
from sequence.states import TERMINAL

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or ``"2w"`` as a timedelta."""
    match = _AGE.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not an age; write a whole number and a unit: "
            "30d (days), 12h (hours), 90m (minutes), 45s (seconds) or 2w (weeks)."
        )
    return timedelta(seconds=int(match[1]) * UNITS[match[2].lower()])


@dataclass
class PruneResult:
    """How many sequences and attempts were (or, in a dry run, would be) deleted."""

    sequences: int = 0
    attempts: int = 0
    batches: int = 0

    def __str__(self) -> str:
        return f"{self.sequences} sequences and {self.attempts} attempts in {self.batches} batches"


def prunable(older_than: timedelta) -> QuerySet[SequenceRecord]:
    """Finished sequences that finished more than ``older_than`` ago."""
    cutoff = timezone.now() - older_than
    return SequenceRecord.objects.filter(status__in=TERMINAL, finished_at__lt=cutoff)


def prune(older_than: timedelta, *, batch_size: int = 1000, dry_run: bool = False) -> PruneResult:
    """Delete finished sequences older than ``older_than`` with their attempts, in batches.

    Each batch is its own short transaction, so a large backlog neither holds locks for
    long nor grows one huge transaction. Sequences still pending, running, retrying or
    paused are never deleted, however old.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: give 1 or more.")
    result = PruneResult()
    candidates = prunable(older_than).order_by("finished_at", "id")
    if dry_run:
        result.sequences = candidates.count()
        result.attempts = StepAttempt.objects.filter(sequence__in=candidates).count()
        return result
    while True:
        with transaction.atomic():
            # Locked, so a retry racing the prune waits and then finds the row gone,
            # instead of the prune deleting a sequence that just became active again.
            ids = list(
                candidates.select_for_update(skip_locked=True).values_list("id", flat=True)[
                    :batch_size
                ]
            )
            if not ids:
                return result
            # only("id"): the cascade needs the ids, not each row's data.
            _, deleted = SequenceRecord.objects.filter(pk__in=ids).only("id").delete()
        result.sequences += deleted.get(SequenceRecord._meta.label, 0)
        result.attempts += deleted.get(StepAttempt._meta.label, 0)
        result.batches += 1
