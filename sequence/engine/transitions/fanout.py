"""A ForEach as a whole: begun under the claim of its step, its first places queued, and
the sequence moved on (or failed) once its elements are done.

The sequence stays ``running`` while its ForEach runs, under the claim that began it
(without a lease: the elements hold their own); ``elements`` has each element's moves.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from sequence.declare.exceptions import StepFenced
from sequence.engine import history
from sequence.engine.claims import Claim
from sequence.engine.states import FANNING, IN_FLIGHT, ITEM_TRANSITIONS, Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED, Then, compensating
from sequence.engine.transitions.elements import ItemClaim, count, in_flight
from sequence.models import ItemStatus, SequenceItem, SequenceRecord


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
        items.filter(status__in=sources("begin", of=ITEM_TRANSITIONS)).update(
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
        sequence_id=sequence_id,
        step_index=step_index,
        status__in=sources("queue", of=ITEM_TRANSITIONS),
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
        sequence_id=record.pk, step_index=record.step_index,
        step=record.plan[record.step_index], epoch=record.epoch, attempt=1,
        outcome=Outcome.SUCCEEDED, started_at=record.claimed_at or timezone.now(),
        changes=history.changes(record.data, data),
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
        ending = compensating(undo, Status.FAILED)
    changed = rows.update(
        **{"attempt": 0, "recoveries": 0, **ending}, error=error, items_total=None,
        updated_at=Now(), **RELEASED,
    )  # fmt: skip
    return ending["status"] if changed else None


def fail_item(ic: ItemClaim, error: str, tb: str, *, will_retry: bool) -> Then:
    """Record a failed attempt of the element: RQ retries it, or (failed for good) the
    sequence fails if it was the last in flight, or the others run on."""
    with transaction.atomic():
        status = ItemStatus.RETRYING if will_retry else ItemStatus.FAILED
        due = Now() if will_retry else None  # RQ holds the retry; the sweep checks it is there
        failing = ic.mine().filter(status__in=sources("fail", status, of=ITEM_TRANSITIONS))
        if not failing.update(status=status, error=error, dispatch_due=due, **RELEASED):
            ic.settled = True
            return Then.GO_ON
        history.write(ic.entry(Outcome.FAILED, error, tb))
        ic.settled = True
        if will_retry:
            return Then.RETRY
        r = ic.record
        count(ic, items_failed=F("items_failed") + 1)
        # No further element starts: those queued and not started go back.
        SequenceItem.objects.filter(
            sequence_id=r.pk,
            step_index=r.step_index,
            status__in=sources("hold", of=ITEM_TRANSITIONS),
        ).update(status=ItemStatus.PENDING, dispatch_due=None)
        return Then.FAIL if not in_flight(ic) else Then.GO_ON


def recover_item(item: SequenceItem, reason: str, *, give_up: bool) -> Then | None:
    """A ForEach element whose worker died (or whose job was lost), if still as read.

    Its claim is dropped and it is queued again (``REQUEUE``: queue its job); with
    ``give_up`` (it was recovered SEQUENCE_MAX_RECOVERIES times) it fails for good
    instead (``GO_ON`` while others run, ``FAIL`` when it was the last in flight: fail
    the sequence). None if it moved meanwhile.
    """
    rows = SequenceItem.objects.filter(
        pk=item.pk,
        status=item.status,
        claim_token=item.claim_token,
        attempt=item.attempt,
        status__in=sources("recover", of=ITEM_TRANSITIONS),
    )
    record = SequenceRecord.objects.get(pk=item.sequence_id)
    entry = history.Entry(
        sequence_id=record.pk, step_index=item.step_index, step=record.plan[item.step_index],
        epoch=record.epoch, attempt=item.attempt, outcome=Outcome.LOST,
        started_at=item.claimed_at or timezone.now(), worker=item.claimed_by, error=reason,
        item=item.index,
    )  # fmt: skip
    with transaction.atomic():
        if not give_up:
            if not rows.update(
                status=ItemStatus.QUEUED, recoveries=F("recoveries") + 1, dispatch_due=Now(),
                **RELEASED,
            ):  # fmt: skip
                return None
            if item.claim_token is not None:
                history.write(entry)
            return Then.REQUEUE
        if not rows.update(status=ItemStatus.FAILED, error=reason, **RELEASED):
            return None
        history.write(entry)
        SequenceRecord.objects.filter(pk=record.pk).update(
            items_failed=F("items_failed") + 1, updated_at=Now()
        )
        SequenceItem.objects.filter(
            sequence_id=record.pk,
            step_index=item.step_index,
            status__in=sources("hold", of=ITEM_TRANSITIONS),
        ).update(status=ItemStatus.PENDING, dispatch_due=None)
        in_flight = SequenceItem.objects.filter(
            sequence_id=record.pk, step_index=item.step_index, status__in=IN_FLIGHT
        ).exists()
    return Then.GO_ON if in_flight else Then.FAIL
