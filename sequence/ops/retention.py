"""Retention: delete finished sequences, and their history, once they are old enough."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from sequence.declare.registry import spec_for
from sequence.engine.rq.dispatch import STEP, UNDO, WAKE, delete_jobs, job_id, queue_for
from sequence.engine.states import TERMINAL, Outcome
from sequence.models import SequenceRecord, StepAttempt

logger = logging.getLogger("sequence")

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
    jobs: int = 0  # job hashes deleted from Redis

    def __str__(self) -> str:
        return (
            f"{self.sequences} sequences and {self.attempts} attempts in {self.batches} "
            f"batches, and {self.jobs} jobs left in Redis"
        )


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
            jobs = _jobs_of(ids)
            # only("id"): the cascade needs the ids, not each row's data.
            _, deleted = SequenceRecord.objects.filter(pk__in=ids).only("id").delete()
        result.sequences += deleted.get(SequenceRecord._meta.label, 0)
        result.attempts += deleted.get(StepAttempt._meta.label, 0)
        result.batches += 1
        for queue, names in jobs.items():
            try:
                result.jobs += delete_jobs(queue, names)
            except Exception:
                # The rows are gone either way; what Redis still holds expires by itself.
                logger.exception(
                    "Prune: could not delete %s jobs from queue %r.", len(names), queue
                )


_UNDONE = (Outcome.COMPENSATED, Outcome.COMPENSATION_FAILED)


def _jobs_of(ids: list[int]) -> dict[str, list[str]]:
    """Every job id these sequences may still have in Redis, by queue: one per (step,
    epoch) their history names, and the one the row itself points at."""
    records = SequenceRecord.objects.filter(pk__in=ids).only(
        "id", "name", "plan", "queue", "step_index", "epoch", "undo_index"
    )
    by_pk = {r.pk: r for r in records}
    units: set[tuple[int, int, int, str]] = set()
    for record in by_pk.values():
        units.add((record.pk, record.step_index, record.epoch, STEP))
        if record.undo_index is not None and record.undo_index >= 0:
            units.add((record.pk, record.undo_index, record.epoch, UNDO))
    history = StepAttempt.objects.filter(sequence_id__in=ids).values_list(
        "sequence_id", "step_index", "epoch", "outcome"
    )
    for pk, index, epoch, outcome in history.distinct():
        units.add((pk, index, epoch, UNDO if outcome in _UNDONE else STEP))
        spec = spec_for(by_pk[pk], index)
        if spec is not None and spec.wait is not None:
            # The wake-up job its Sleep or WaitFor may have scheduled, past it.
            units.add((pk, index + 1, epoch + 1, WAKE))
    jobs: dict[str, list[str]] = {}
    for pk, index, epoch, kind in units:
        record = by_pk[pk]
        queue = queue_for(spec_for(record, index), record.queue)
        jobs.setdefault(queue, []).append(job_id(pk, index, epoch, kind))
    return jobs
