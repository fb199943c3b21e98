"""A ForEach: its elements started, each claimed and committed, and the sequence moved on.

The sequence stays ``running`` while its ForEach runs, under the claim that began it
(without a lease: the elements hold their own). Each element is a row of its own with
its own claim, so elements never wait on each other's work; each element's commit counts
itself on the sequence row, under that row's lock, so the commit that counts the last
element is the one that moves the sequence on, once. With ``concurrency`` places, each
commit hands its place to the next element not yet started, in list order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from sequence import history
from sequence.claims import Claim, lease_seconds
from sequence.exceptions import StepDeadlineExceeded, StepFenced
from sequence.models import ItemStatus, SequenceItem, SequenceRecord, ago
from sequence.states import FANNING, Outcome, Status, sources
from sequence.transitions.base import RELEASED

IN_FLIGHT = (ItemStatus.RUNNING, ItemStatus.RETRYING)
CLAIMABLE = (ItemStatus.QUEUED, ItemStatus.RETRYING)


@dataclass
class ItemClaim:
    """An element taken by this process: the sequence as read, and the element's fence."""

    record: SequenceRecord
    pk: int  # the element's row
    index: int
    token: str
    worker: str
    started_at: datetime
    deadline: float
    timeout: int
    attempt: int
    settled: bool = False
    # True once a failed attempt was its last before RQ's retries ran out.
    final: bool = False

    def mine(self) -> Any:
        return SequenceItem.objects.filter(pk=self.pk, claim_token=self.token)

    def entry(self, outcome: str, error: str = "", tb: str = "") -> history.Entry:
        r = self.record
        return history.Entry(
            r.pk, r.step_index, r.plan[r.step_index], r.epoch, self.attempt, outcome,
            self.started_at, self.worker, error, tb, self.index,
        )  # fmt: skip


def begin(claim: Claim, total: int, concurrency: int) -> list[int]:
    """Start the ForEach the claim holds: its elements' rows, and the first places.

    Elements that succeeded before (a retried ForEach) are kept; the others start over.
    Returns the positions queued now (none while the sequence is paused).
    """
    record = claim.record
    index = record.step_index
    with transaction.atomic():
        items = SequenceItem.objects.filter(sequence_id=record.pk, step_index=index)
        have = set(items.values_list("index", flat=True))
        SequenceItem.objects.bulk_create(
            [
                SequenceItem(sequence_id=record.pk, step_index=index, index=i)
                for i in range(total)
                if i not in have
            ],
            batch_size=1000,
        )
        items.exclude(status=ItemStatus.DONE).update(
            status=ItemStatus.PENDING, attempt=0, recoveries=0, error="", result=None,
            dispatch_due=None, **RELEASED,
        )  # fmt: skip
        done = items.filter(status=ItemStatus.DONE).count()
        started = claim.mine().filter(status__in=sources("fan_out")).update(
            items_total=total, items_done=done, items_failed=0, lease_until=None,
            claimed_by="", dispatch_due=None, updated_at=Now(),
        )  # fmt: skip
        if not started:
            raise StepFenced(f"Sequence {record.pk} lost the claim on its ForEach.")
        running = SequenceRecord.objects.filter(pk=record.pk, status__in=FANNING).exists()
        queued = _queue(record.pk, index, concurrency) if running else []
    claim.settled = True
    return queued


def _queue(sequence_id: int, step_index: int, places: int) -> list[int]:
    """Queue the first ``places`` elements not started, in list order (in a transaction)."""
    if places <= 0:
        return []
    pending = SequenceItem.objects.filter(
        sequence_id=sequence_id, step_index=step_index, status=ItemStatus.PENDING
    )
    chosen = list(pending.order_by("index").values_list("pk", "index")[:places])
    pending.filter(pk__in=[pk for pk, _ in chosen]).update(
        status=ItemStatus.QUEUED, dispatch_due=Now()
    )
    return [i for _, i in chosen]


def pump(record: SequenceRecord, concurrency: int) -> list[int]:
    """Fill the places of a running ForEach after a resume: the positions to queue.

    Elements queued before the pause are queued again (their jobs found the sequence
    paused and ended); a duplicate job is harmless, as only one can claim an element.
    """
    with transaction.atomic():
        row = SequenceRecord.objects.filter(
            pk=record.pk, status__in=FANNING, items_total__isnull=False, items_failed=0
        )
        if not row.update(updated_at=Now()):  # takes the row's lock, as an element's commit
            return []
        items = SequenceItem.objects.filter(sequence_id=record.pk, step_index=record.step_index)
        queued = list(items.filter(status=ItemStatus.QUEUED).values_list("index", flat=True))
        busy = items.filter(status__in=IN_FLIGHT).count() + len(queued)
        return queued + _queue(record.pk, record.step_index, concurrency - busy)


def claim_item(
    sequence_id: int, step_index: int, epoch: int, index: int, worker: str, token: str,
    timeout: int, entered: float,
) -> ItemClaim | None:  # fmt: skip
    """Take an element whose job this is, while its ForEach runs; None if the job is stale."""
    running = SequenceRecord.objects.filter(
        pk=sequence_id, epoch=epoch, step_index=step_index, status__in=FANNING,
        items_total__isnull=False, items_failed=0,
    )  # fmt: skip
    rows = SequenceItem.objects.filter(
        Q(status__in=CLAIMABLE) | Q(status=ItemStatus.RUNNING, claim_token=token),
        sequence_id=sequence_id, step_index=step_index, index=index,
    )  # fmt: skip
    if not rows.filter(sequence__in=running).update(
        status=ItemStatus.RUNNING, claim_token=token, claimed_by=worker[:200],
        claimed_at=Now(), lease_until=ago(-lease_seconds(timeout)), dispatch_due=None,
        attempt=F("attempt") + 1,
    ):  # fmt: skip
        return None
    item_pk, attempt = rows.model.objects.values_list("pk", "attempt").get(
        sequence_id=sequence_id, step_index=step_index, index=index
    )
    record = SequenceRecord.objects.get(pk=sequence_id)
    deadline = entered + timeout if timeout > 0 else float("inf")
    return ItemClaim(
        record, item_pk, index, token, worker, timezone.now(), deadline, timeout, attempt
    )


def _count(ic: ItemClaim, **counts: Any) -> SequenceRecord:
    """Count the element on the sequence row (taking its lock); its counts as they are then
    (only those: the data, which holds the whole list, is not read again)."""
    r = ic.record
    SequenceRecord.objects.filter(pk=r.pk, epoch=r.epoch, step_index=r.step_index).update(
        **counts, updated_at=Now()
    )
    fields = ("status", "step_index", "items_done", "items_total", "items_failed")
    return SequenceRecord.objects.only(*fields).get(pk=r.pk)


def _in_flight(ic: ItemClaim) -> int:
    r = ic.record
    return SequenceItem.objects.filter(
        sequence_id=r.pk, step_index=r.step_index, status__in=IN_FLIGHT
    ).count()


def commit_item(ic: ItemClaim, result: Any, concurrency: int) -> tuple[str, list[int]]:
    """Store the element's result and count it; what follows, and positions queued.

    Returns ``("finish", [])`` when it was the last element (the caller moves the
    sequence on), ``("fail", [])`` when it was the last in flight after a failure,
    or ``("go", [next position])``.
    """
    with transaction.atomic():
        if (
            not ic.mine()
            .filter(status=ItemStatus.RUNNING, lease_until__gt=Now())
            .update(status=ItemStatus.DONE, result=result, error="", dispatch_due=None, **RELEASED)
        ):
            if ic.mine().exists():
                raise StepDeadlineExceeded(
                    f"element {ic.index} reached the database after its lease; not committed."
                )
            raise StepFenced(f"element {ic.index} lost its claim; its result is discarded.")
        row = _count(ic, items_done=F("items_done") + 1)
        history.write(ic.entry(Outcome.SUCCEEDED))
        if row.items_failed:
            return ("fail" if not _in_flight(ic) else "go"), []
        if row.items_done >= (row.items_total or 0):
            return "finish", []
        if row.status not in FANNING:
            return "go", []
        return "go", _queue(row.pk, row.step_index, 1)


def fail_item(ic: ItemClaim, error: str, tb: str, *, will_retry: bool) -> str:
    """Record a failed attempt of the element: ``"retry"``, ``"fail"`` (the last in
    flight after it failed for good: fail the sequence) or ``"wait"`` (others run on)."""
    with transaction.atomic():
        status = ItemStatus.RETRYING if will_retry else ItemStatus.FAILED
        due = Now() if will_retry else None  # RQ holds the retry; the sweep checks it is there
        if not ic.mine().update(status=status, error=error, dispatch_due=due, **RELEASED):
            ic.settled = True
            return "wait"
        history.write(ic.entry(Outcome.FAILED, error, tb))
        ic.settled = True
        if will_retry:
            return "retry"
        r = ic.record
        _count(ic, items_failed=F("items_failed") + 1)
        # No further element starts: those queued and not started go back.
        SequenceItem.objects.filter(
            sequence_id=r.pk, step_index=r.step_index, status=ItemStatus.QUEUED
        ).update(status=ItemStatus.PENDING, dispatch_due=None)
        return "fail" if not _in_flight(ic) else "wait"


def finish(record: SequenceRecord, data: dict[str, Any], token: str) -> Status | None:
    """Move past the ForEach all of whose elements succeeded (``data`` holds the results).

    Paused or canceled meanwhile, the sequence keeps that status (a paused one goes on
    from the next step when resumed). Returns the new status, or None if it moved.
    """
    last = record.step_index + 1 >= len(record.plan)
    rows = SequenceRecord.objects.filter(pk=record.pk, epoch=record.epoch, claim_token=token)
    moved = {
        "step_index": record.step_index + 1, "epoch": F("epoch") + 1, "data": data,
        "items_total": None, "items_done": 0, "items_failed": 0, "attempt": 0,
        "recoveries": 0, "error": "", "updated_at": Now(), **RELEASED,
    }  # fmt: skip
    target = Status.COMPLETED if last else Status.PENDING
    entry = history.Entry(
        record.pk, record.step_index, record.plan[record.step_index], record.epoch, 1,
        Outcome.SUCCEEDED, record.claimed_at or timezone.now(), "",
    )  # fmt: skip
    with transaction.atomic():
        if rows.filter(status__in=sources("fan_in", target)).update(
            status=target, dispatch_due=None if last else Now(),
            finished_at=Now() if last else None, **moved,
        ):  # fmt: skip
            history.write(entry)
            return target
        for held in (Status.PAUSED, Status.CANCELED):
            if rows.filter(status__in=sources("fan_in", held)).update(**moved):
                history.write(entry)
                return held
    return None


def fail_fan_out(
    record: SequenceRecord, token: str, error: str, undo: tuple[int, int | None] | None
) -> Status | None:
    """Fail the sequence whose ForEach had an element fail for good (compensating first
    from ``undo``: the plan index and element to start the walk at)."""
    rows = SequenceRecord.objects.filter(
        pk=record.pk, claim_token=token, status__in=sources("fail", Status.FAILED)
    )
    ending: dict[str, Any] = {"status": Status.FAILED, "finished_at": Now(), "dispatch_due": None}
    if undo is not None:
        ending = {
            "status": Status.COMPENSATING, "undo_index": undo[0], "undo_item": undo[1],
            "ends_as": Status.FAILED, "dispatch_due": Now(),
        }  # fmt: skip
    changed = rows.update(
        **ending, error=error, items_total=None, attempt=0, recoveries=0, updated_at=Now(),
        **RELEASED,
    )  # fmt: skip
    return ending["status"] if changed else None


def recover_item(item: SequenceItem, reason: str, *, give_up: bool) -> str:
    """A ForEach element whose worker died (or whose job was lost), if still as read.

    Its claim is dropped and it is queued again (``"requeued"``: queue its job); with
    ``give_up`` (it was recovered SEQUENCE_MAX_RECOVERIES times) it fails for good
    instead (``"failed"``, or ``"fail"`` when it was the last in flight: fail the
    sequence). ``""`` if it moved meanwhile.
    """
    rows = SequenceItem.objects.filter(
        pk=item.pk, status=item.status, claim_token=item.claim_token, attempt=item.attempt
    )
    record = SequenceRecord.objects.get(pk=item.sequence_id)
    entry = history.Entry(
        record.pk, item.step_index, record.plan[item.step_index], record.epoch, item.attempt,
        Outcome.LOST, item.claimed_at or timezone.now(), item.claimed_by, reason, "", item.index,
    )  # fmt: skip
    with transaction.atomic():
        if not give_up:
            if not rows.update(
                status=ItemStatus.QUEUED, recoveries=F("recoveries") + 1, dispatch_due=Now(),
                **RELEASED,
            ):  # fmt: skip
                return ""
            if item.claim_token is not None:
                history.write(entry)
            return "requeued"
        if not rows.update(status=ItemStatus.FAILED, error=reason, **RELEASED):
            return ""
        history.write(entry)
        SequenceRecord.objects.filter(pk=record.pk).update(
            items_failed=F("items_failed") + 1, updated_at=Now()
        )
        SequenceItem.objects.filter(
            sequence_id=record.pk, step_index=item.step_index, status=ItemStatus.QUEUED
        ).update(status=ItemStatus.PENDING, dispatch_due=None)
        in_flight = SequenceItem.objects.filter(
            sequence_id=record.pk, step_index=item.step_index, status__in=IN_FLIGHT
        ).exists()
    return "failed" if in_flight else "fail"
