"""The recovery sweep: queue again every sequence that should be moving but is not.

The database row is the truth and Redis may lose what it holds, so the sweep looks for
three kinds of rows, each read in bounded batches by id through a partial index:

1. **Dead claims**: a step whose lease ran out (database clock), or whose worker
   stopped sending liveness beats (``SEQUENCE_WORKER_DEAD_AFTER``) or shut down.
2. **Overdue outbox entries**: a commit that made a dispatch due more than ``grace``
   seconds ago and was never confirmed (the worker died between commit and enqueue, or
   Redis was unreachable).
3. **Lost jobs**: a pending or retrying row, older than ``grace``, with no live RQ job
   for its epoch (Redis was flushed, restarted empty, or evicted the job).

Then the keys of every ``Concurrency`` with queued sequences give their free places
(``places``): the process that ended a sequence may have died before it promoted one.

Each is re-dispatched under a new epoch, by an update conditional on the epoch (and
claim) the sweep read, so sweeps running in several processes at once recover a row
once. Jobs are looked up in Redis with pipelines, a batch at a time.

A sweep runs in every worker's maintenance thread, and what it holds at once the worker
keeps (freed, it stays with the allocator). So it holds one batch of rows at a time,
reads only the current step's name of each plan, and keeps of each queue's list only
the hashes of its job ids: about 13 bytes per queued job, the one thing that grows
with the sequences in flight besides the ids ``SweepResult.confirmed`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Exists,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    When,
)
from django.db.models.functions import Now

from sequence.declare.conf import settings
from sequence.declare.registry import find_step, registered
from sequence.engine import foreach, places, points, transitions
from sequence.engine.failure import undo_after, undo_start
from sequence.engine.moves import Move, after_move
from sequence.engine.rq.dispatch import ITEM, Work, confirm_dispatch, dispatch, unit_of
from sequence.engine.rq.registries import LiveJobs, dead_workers, step_name
from sequence.engine.states import FANNING, ITEM_TRANSITIONS, MOVING, Status, sources
from sequence.engine.transitions.base import Then
from sequence.engine.waiting import wake_due
from sequence.models import Position, SequenceItem, SequenceRecord, WorkerBeat, ago

logger = logging.getLogger("sequence")

# Fields the sweep reads; ``data`` is loaded only for a sequence it fails. Of the plan
# only the current step's name is read (``CurrentStep``): a whole plan is a list of
# every step's name, which in a batch of rows would cost more than the rest together.
FIELDS = (
    "id", "name", "step_index", "epoch", "queue", "status", "attempt", "recoveries",
    "claim_token", "claimed_by", "claimed_at", "lease_until", "dispatch_due", "updated_at",
    "undo_index", "undo_item", "ends_as",
)  # fmt: skip

# Worker rows not seen for this long are deleted.
FORGET_WORKERS_AFTER = timedelta(days=1)


@dataclass
class SweepResult:
    """What one sweep did, by sequence id."""

    redispatched: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)
    # Sleepers woken and waits timed out whose time had come.
    woken: int = 0
    # Queued sequences given a place that had freed (the end's process died first).
    promoted: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"redispatched {len(self.redispatched)}, failed {len(self.failed)}, "
            f"released {len(self.released)}, confirmed {len(self.confirmed)}, "
            f"woken {self.woken}, promoted {len(self.promoted)}"
        )

    def __bool__(self) -> bool:
        return bool(
            self.redispatched or self.failed or self.released or self.confirmed or self.woken
            or self.promoted
        )  # fmt: skip


# The three kinds of stuck rows, as conditions (health counts rows by them too).


def dead_claim() -> Q:
    # lease_until is set exactly while a claim is held (the partial index covers it).
    dead = dead_workers().values("name")
    return Q(lease_until__isnull=False) & (Q(lease_until__lt=Now()) | Q(claimed_by__in=dead))


def overdue_entry(grace: float) -> Q:
    return Q(dispatch_due__lt=ago(grace))


def unconfirmed_move(grace: float) -> Q:
    """Moving, neither claimed nor with a dispatch due, for longer than ``grace``: its job
    may be lost (the sweep asks Redis)."""
    return Q(
        status__in=MOVING,
        dispatch_due__isnull=True,
        lease_until__isnull=True,
        updated_at__lt=ago(grace),
    )


def dead_claims() -> QuerySet[SequenceRecord]:
    lease_ran_out = Case(
        When(lease_until__lt=Now(), then=True), default=False, output_field=BooleanField()
    )
    return SequenceRecord.objects.filter(dead_claim()).annotate(lease_ran_out=lease_ran_out)


def overdue(grace: float) -> QuerySet[SequenceRecord]:
    return SequenceRecord.objects.filter(overdue_entry(grace))


def maybe_lost(grace: float) -> QuerySet[SequenceRecord]:
    return SequenceRecord.objects.filter(unconfirmed_move(grace))


class CurrentStep(Func):
    """The name of the row's current unit's step, read in the database: ``plan[step_index]``,
    or ``plan[undo_index]`` while compensating."""

    # SQLite: JSON_EXTRACT(plan, '$[' || step_index || ']')
    template = "JSON_EXTRACT(%(expressions)s || ']')"
    arg_joiner = ", '$[' || "
    output_field = CharField()

    def __init__(self) -> None:
        index = Case(
            When(status=Status.COMPENSATING, undo_index__gte=0, then=F("undo_index")),
            default=F("step_index"),
            output_field=IntegerField(),
        )
        super().__init__(F("plan"), index)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # plan ->> step_index
        return self.as_sql(
            compiler, connection, template="(%(expressions)s)", arg_joiner=" ->> ", **extra
        )


def read(queryset: QuerySet[SequenceRecord]) -> QuerySet[SequenceRecord]:
    """The sweep's view of rows: ``FIELDS`` and the current step's name."""
    return queryset.only(*FIELDS).annotate(current_step_name=CurrentStep())


def _batches(queryset: QuerySet[SequenceRecord], size: int) -> Iterator[list[SequenceRecord]]:
    """The rows of ``queryset`` in batches of ``size``, by id (keyset, never OFFSET).

    A batch is emptied when the next one is asked for, so that one batch at a time is in
    memory however many rows the sweep reads.
    """
    last = 0
    while True:
        batch = list(read(queryset.filter(id__gt=last)).order_by("id")[:size])
        if not batch:
            return
        yield batch
        if len(batch) < size:
            return
        last = batch[-1].pk
        batch.clear()


def sweep(grace: float | None = None) -> SweepResult:
    """Re-dispatch stuck sequences under a new epoch; safe to run from many processes."""
    grace = settings.DISPATCH_GRACE if grace is None else grace
    size = max(1, int(settings.SWEEP_BATCH))
    result = SweepResult()
    jobs = LiveJobs()
    for batch in _batches(dead_claims(), size):
        for record in batch:
            holder = record.claimed_by or "?"
            if getattr(record, "lease_ran_out", False):
                reason = f"the lease of worker {holder} on step {_step(record)} ran out"
            else:
                reason = f"worker {holder} stopped beating while it ran step {_step(record)}"
            recover(record, result, reason=reason)
    # Lost jobs before overdue entries: an entry the sweep confirms turns its row into
    # one the lost-job pass reads, so in the other order every confirmed row would be
    # looked up in Redis twice, or remembered (memory growing with the rows in flight).
    for batch in _batches(maybe_lost(grace), size):
        _lost_jobs(batch, jobs, result)
    for batch in _batches(overdue(grace), size):
        _overdue_entries(batch, jobs, result)
    _sweep_items(grace, jobs, result)
    # Sleepers due while no worker ran (the workers' own passes wake the rest on time).
    result.woken = wake_due()
    for name, key in places.waiting_keys():
        result.promoted += places.free(None, name, key)
    WorkerBeat.objects.filter(last_seen__lt=ago(FORGET_WORKERS_AFTER.total_seconds())).delete()
    if result.redispatched or result.failed or result.released or result.promoted:
        logger.warning("Recovery sweep: %s", result)
    return result


def _sweep_items(grace: float, jobs: LiveJobs, result: SweepResult) -> None:
    """ForEach elements: claims whose worker died, and queued ones whose job was lost."""
    size = max(1, int(settings.SWEEP_BATCH))
    dead = dead_workers().values("name")
    held = SequenceItem.objects.filter(lease_until__isnull=False).filter(
        Q(lease_until__lt=Now()) | Q(claimed_by__in=dead)
    )
    for item in held.select_related("sequence").order_by("pk")[:size]:
        give_up = item.recoveries >= settings.MAX_RECOVERIES
        _recover_item(item, f"worker {item.claimed_by or '?'} died in it", result, give_up)
    # A ForEach whose last element committed but whose worker died before moving it on.
    busy = SequenceItem.objects.filter(
        sequence=OuterRef("pk"),
        step_index=OuterRef("step_index"),
        status__in=sources("recover", of=ITEM_TRANSITIONS),
    )
    idle = SequenceRecord.objects.filter(
        # By status first: the status index keeps this to the rows running now.
        status__in=FANNING,
        items_total__isnull=False,
        claim_token__isnull=False,
        updated_at__lt=ago(grace),
    ).filter(Q(items_failed__gt=0) | Q(items_done__gte=F("items_total")))
    for record in idle.exclude(Exists(busy)).order_by("pk")[:size]:
        result.redispatched.append(record.pk)
        foreach.settle(record)
    # Only while the ForEach runs: the queued elements of a paused sequence wait for its
    # resume (which queues them again), those of a finished one for nothing.
    waiting = SequenceItem.objects.filter(
        status__in=sources("claim", of=ITEM_TRANSITIONS),
        claim_token__isnull=True,
        dispatch_due__lt=ago(grace),
        sequence__status__in=FANNING,
    )
    items = list(waiting.select_related("sequence").order_by("pk")[:size])
    live = jobs.live_items(items)
    # An element keeps its dispatch time until its claim: one whose job a worker took
    # and then died with is looked at again by the next sweep.
    for item in items:
        if item.pk not in live:
            _recover_item(item, "RQ holds no job for it", result, give_up=False)


def _recover_item(item: SequenceItem, reason: str, result: SweepResult, give_up: bool) -> None:
    outcome = transitions.fanout.recover_item(item, reason, give_up=give_up)
    record = item.sequence
    if outcome == Then.REQUEUE:
        result.redispatched.append(record.pk)
        spec = find_step(record.name, record.plan[item.step_index])
        work = Work(
            sequence=record.pk, index=item.step_index, epoch=record.epoch, kind=ITEM,
            element=item.index,
        )  # fmt: skip
        dispatch(work, record.queue, spec)
    elif outcome == Then.FAIL:
        result.failed.append(record.pk)
        cls = registered().get(record.name)
        spec = cls.step_named(record.plan[item.step_index]) if cls is not None else None
        if cls is not None and spec is not None:
            foreach.fail_sequence(record.pk, cls, spec)


def _lost_jobs(batch: list[SequenceRecord], jobs: LiveJobs, result: SweepResult) -> None:
    live = jobs.live(batch)
    for record in batch:
        if record.pk not in live:
            recover(record, result, reason="RQ holds no job for its step")


def _overdue_entries(batch: list[SequenceRecord], jobs: LiveJobs, result: SweepResult) -> None:
    active = [r for r in batch if r.status in MOVING]
    live = jobs.live(active)
    # Paused, canceled, finished or claimed (nothing to queue), or queued after all.
    done = [r for r in batch if r.pk in live or r not in active]
    result.confirmed.extend(_clear_outbox(done))
    for record in active:
        if record.pk not in live:
            recover(record, result, reason="its next step was never queued")


def _step(record: SequenceRecord) -> str:
    name = step_name(record)
    return "?" if name is None else name


def _clear_outbox(records: list[SequenceRecord]) -> list[int]:
    """Confirm the outbox entries of ``records`` (each at the epoch read), in one statement."""
    if not records:
        return []
    by_epoch: dict[int, list[int]] = {}
    for record in records:
        by_epoch.setdefault(record.epoch, []).append(record.pk)
    confirm_dispatch(by_epoch)
    return [record.pk for record in records]


def recover(record: SequenceRecord, result: SweepResult, *, reason: str) -> None:
    """Move one stuck row on, if it is still as read: re-dispatch, release or fail it."""
    step = _step(record)
    undo_from, undo_next = _undo_positions(record)
    with transaction.atomic():
        outcome = transitions.recover(
            record, step, reason, undo_from=undo_from, undo_next=undo_next
        )
        if outcome == "failed":
            result.failed.append(record.pk)
        elif outcome == "released":
            result.released.append(record.pk)
        elif outcome in ("redispatched", "undone"):
            result.redispatched.append(record.pk)
        if outcome in ("failed", "redispatched", "undone"):
            found = Status(record.status)
            transaction.on_commit(lambda: _moved(record.pk, outcome, found), robust=True)


def _undo_positions(record: SequenceRecord) -> tuple[Position | None, Position | None]:
    """For a claim recovered too often: where a compensation walk would start, or go on.

    Read only then (rarely): it needs the whole plan, which the sweep does not load.
    """
    if record.claim_token is None or record.recoveries < settings.MAX_RECOVERIES:
        return None, None
    cls = registered().get(record.name)
    if cls is None:
        return None, None
    whole = SequenceRecord.objects.get(pk=record.pk)
    if record.status == Status.COMPENSATING:
        return None, undo_after(whole, cls, record.undo_index or 0, record.undo_item)
    return undo_start(whole, cls, record.step_index), None


def _moved(sequence_id: int, outcome: str, found: Status) -> None:
    """After a recovery committed: queue what is due, or announce the end."""
    record = SequenceRecord.objects.get(pk=sequence_id)
    if record.status in MOVING:
        index, _kind, _item = unit_of(record)
        points.fire("sweep_before_dispatch", sequence=record.pk, step=index, epoch=record.epoch)
    elif outcome == "redispatched":
        return  # moved by someone else since (a cancel, say), who announced it
    after_move(record, Move(found, Status(record.status)))


def recover_claim(sequence_id: int, epoch: int, token: str, *, reason: str) -> SweepResult:
    """Take back the claim ``token`` holds on a sequence, if it still does.

    For a worker that knows the claim's holder died: a forking worker whose work-horse
    was killed calls this with the horse's execution id.
    """
    result = SweepResult()
    record = read(
        SequenceRecord.objects.filter(pk=sequence_id, epoch=epoch, claim_token=token)
    ).first()
    if record is not None:
        recover(record, result, reason=reason)
    return result


def recover_worker(name: str, *, reason: str) -> SweepResult:
    """Take back every claim held under the worker name ``name`` (a previous process)."""
    result = SweepResult()
    held = SequenceRecord.objects.filter(claimed_by=name, lease_until__isnull=False)
    for batch in _batches(held, 500):
        for record in batch:
            recover(record, result, reason=reason)
    return result


def check_sequence(sequence_id: int, epoch: int, *, reason: str) -> SweepResult:
    """Apply the sweep's dead-claim rule to one sequence now (RQ reported its job abandoned)."""
    result = SweepResult()
    for record in read(dead_claims().filter(pk=sequence_id, epoch=epoch)):
        recover(record, result, reason=reason)
    return result
