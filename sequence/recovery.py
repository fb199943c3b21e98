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

Each is re-dispatched under a new epoch, by an update conditional on the epoch (and
claim) the sweep read, so sweeps running in several processes at once recover a row
once. Jobs are looked up in Redis with pipelines, a batch at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import BooleanField, Case, ExpressionWrapper, F, Q, QuerySet, When
from django.db.models import DateTimeField as DateTimeOutput
from django.db.models.functions import Now

from sequence.conf import settings
from sequence.dispatch import dispatch, get_queue, job_id
from sequence.models import SequenceRecord, StepAttempt, WorkerBeat
from sequence.states import Outcome, Status

logger = logging.getLogger("sequence")

# Fields the sweep reads; ``data`` is loaded only for a sequence it fails.
FIELDS = (
    "id", "name", "plan", "step_index", "epoch", "queue", "status", "attempt", "recoveries",
    "claim_token", "claimed_by", "claimed_at", "lease_until", "dispatch_due", "updated_at",
)  # fmt: skip

# A queue longer than this is not read whole to check that a job is in it; its jobs
# are then taken to be there when their status says "queued".
SCAN_LIMIT = 100_000

# Seconds a job may sit in RQ's intermediate list (taken by a worker, not started)
# before the sweep calls it lost.
INTERMEDIATE_GRACE = 5

# Worker rows not seen for this long are deleted.
FORGET_WORKERS_AFTER = timedelta(days=1)


@dataclass
class SweepResult:
    """What one sweep did, by sequence id."""

    redispatched: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    confirmed: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"redispatched {len(self.redispatched)}, failed {len(self.failed)}, "
            f"released {len(self.released)}, confirmed {len(self.confirmed)}"
        )

    def __bool__(self) -> bool:
        return bool(self.redispatched or self.failed or self.released or self.confirmed)


def _ago(seconds: float) -> ExpressionWrapper[Any]:
    return ExpressionWrapper(Now() - timedelta(seconds=seconds), output_field=DateTimeOutput())


def dead_workers() -> QuerySet[WorkerBeat]:
    """Workers that shut down, or whose last beat is older than SEQUENCE_WORKER_DEAD_AFTER."""
    return WorkerBeat.objects.filter(
        Q(stopped_at__isnull=False) | Q(last_seen__lt=_ago(settings.WORKER_DEAD_AFTER))
    )


def _dead_claims() -> QuerySet[SequenceRecord]:
    # lease_until is set exactly while a claim is held (the partial index covers it).
    dead = dead_workers().values("name")
    return (
        SequenceRecord.objects.filter(lease_until__isnull=False)
        .filter(Q(lease_until__lt=Now()) | Q(claimed_by__in=dead))
        .annotate(
            lease_ran_out=Case(
                When(lease_until__lt=Now(), then=True), default=False, output_field=BooleanField()
            )
        )
    )


def _overdue(grace: float) -> QuerySet[SequenceRecord]:
    return SequenceRecord.objects.filter(dispatch_due__lt=_ago(grace))


def overdue(grace: float) -> Case:
    """An annotation: the row's outbox entry is older than ``grace`` (database clock)."""
    return Case(
        When(dispatch_due__lt=_ago(grace), then=True), default=False, output_field=BooleanField()
    )


def _maybe_lost(grace: float) -> QuerySet[SequenceRecord]:
    return SequenceRecord.objects.filter(
        status__in=[Status.PENDING, Status.RETRYING],
        dispatch_due__isnull=True,
        lease_until__isnull=True,
        updated_at__lt=_ago(grace),
    )


def _batches(queryset: QuerySet[SequenceRecord], size: int) -> Iterator[list[SequenceRecord]]:
    """The rows of ``queryset`` in batches of ``size``, by id (keyset, never OFFSET)."""
    last = 0
    while True:
        batch = list(queryset.filter(id__gt=last).only(*FIELDS).order_by("id")[:size])
        if not batch:
            return
        yield batch
        if len(batch) < size:
            return
        last = batch[-1].pk


def sweep(grace: float | None = None) -> SweepResult:
    """Re-dispatch stuck sequences under a new epoch; safe to run from many processes."""
    grace = settings.DISPATCH_GRACE if grace is None else grace
    size = max(1, int(settings.SWEEP_BATCH))
    result = SweepResult()
    jobs = LiveJobs()
    for batch in _batches(_dead_claims(), size):
        for record in batch:
            holder = record.claimed_by or "?"
            if getattr(record, "lease_ran_out", False):
                reason = f"the lease of worker {holder} on step {_step(record)} ran out"
            else:
                reason = f"worker {holder} stopped beating while it ran step {_step(record)}"
            recover(record, result, reason=reason)
    for batch in _batches(_overdue(grace), size):
        active = [r for r in batch if r.status in (Status.PENDING, Status.RETRYING)]
        live = jobs.live(active)
        # Paused, canceled, finished or claimed (nothing to queue), or queued after all.
        done = [r for r in batch if r.pk in live or r not in active]
        result.confirmed.extend(_clear_outbox(done))
        for record in active:
            if record.pk not in live:
                recover(record, result, reason="its next step was never queued")
    for batch in _batches(_maybe_lost(grace), size):
        live = jobs.live(batch)
        for record in batch:
            if record.pk not in live:
                recover(record, result, reason="RQ holds no job for its step")
    WorkerBeat.objects.filter(last_seen__lt=_ago(FORGET_WORKERS_AFTER.total_seconds())).delete()
    if result.redispatched or result.failed or result.released:
        logger.warning("Recovery sweep: %s", result)
    return result


def _step(record: SequenceRecord) -> str:
    plan = record.plan
    return str(plan[record.step_index]) if record.step_index < len(plan) else "?"


def _clear_outbox(records: list[SequenceRecord]) -> list[int]:
    """Confirm the outbox entries of ``records`` (each at the epoch read), in one statement."""
    if not records:
        return []
    by_epoch: dict[int, list[int]] = {}
    for record in records:
        by_epoch.setdefault(record.epoch, []).append(record.pk)
    same = Q()
    for epoch, pks in by_epoch.items():
        same |= Q(epoch=epoch, pk__in=pks)
    SequenceRecord.objects.filter(same, dispatch_due__isnull=False).update(dispatch_due=None)
    return [record.pk for record in records]


def _same(record: SequenceRecord) -> QuerySet[SequenceRecord]:
    """The row as the sweep read it: same epoch, status and claim."""
    rows = SequenceRecord.objects.filter(pk=record.pk, epoch=record.epoch, status=record.status)
    if record.claim_token is None:
        return rows.filter(claim_token__isnull=True)
    return rows.filter(claim_token=record.claim_token)


_RELEASED = {"claim_token": None, "claimed_by": "", "claimed_at": None, "lease_until": None}


def recover(record: SequenceRecord, result: SweepResult, *, reason: str) -> None:
    """Move one stuck row on, if it is still as read: re-dispatch, release or fail it."""
    from sequence.claims import point as _point
    from sequence.runner import spec_for

    lost_claim = record.claim_token is not None
    step = _step(record)
    rows = _same(record)
    with transaction.atomic():
        if lost_claim and record.status == Status.RUNNING:
            if record.recoveries >= settings.MAX_RECOVERIES:
                error = f"worker died during step {step} (recovered {record.recoveries} times)"
                # A new epoch fences RQ's own retries of the job that kept dying.
                changed = rows.update(
                    status=Status.FAILED, epoch=F("epoch") + 1, error=error, dispatch_due=None,
                    finished_at=Now(), updated_at=Now(), **_RELEASED,
                )  # fmt: skip
                if changed:
                    _lost(record, error)
                    result.failed.append(record.pk)
                    transaction.on_commit(lambda: _announce_failed(record.pk, error), robust=True)
                return
        elif lost_claim:
            # Paused or canceled while its worker died: drop the claim, keep the status.
            if rows.update(recoveries=F("recoveries") + 1, updated_at=Now(), **_RELEASED):
                _lost(record, f"{reason}; the step runs again when the sequence is resumed")
                result.released.append(record.pk)
            return
        changed = rows.update(
            status=Status.RETRYING if lost_claim else record.status,
            epoch=F("epoch") + 1,
            recoveries=F("recoveries") + (1 if lost_claim else 0),
            dispatch_due=Now(), updated_at=Now(), **_RELEASED,
        )  # fmt: skip
        if not changed:
            return
        if lost_claim:
            _lost(record, f"{reason}; recovered ({record.recoveries + 1})")
        args = (record.pk, record.step_index, record.epoch + 1, record.queue)
        spec = spec_for(record.name, record.plan, record.step_index)

        def redispatch() -> None:
            _point("sweep_before_dispatch", sequence=args[0], step=args[1], epoch=args[2])
            dispatch(*args, spec)

        transaction.on_commit(redispatch, robust=True)
    result.redispatched.append(record.pk)


def _lost(record: SequenceRecord, error: str) -> None:
    from django.utils import timezone

    StepAttempt.objects.create(
        sequence_id=record.pk, step_index=record.step_index, step=_step(record),
        epoch=record.epoch, attempt=record.attempt, outcome=Outcome.LOST,
        started_at=record.claimed_at or record.updated_at, finished_at=timezone.now(),
        worker=record.claimed_by, error=error,
    )  # fmt: skip


def _announce_failed(sequence_id: int, error: str) -> None:
    from sequence.definitions import get_sequence_class
    from sequence.runner import announce_failure

    record = SequenceRecord.objects.get(pk=sequence_id)
    cls = get_sequence_class(record.name)
    announce_failure(record, cls, cls._from_record(record), error, "recovery sweep")


def recover_claim(sequence_id: int, epoch: int, token: str, *, reason: str) -> SweepResult:
    """Take back the claim ``token`` holds on a sequence, if it still does.

    For a worker that knows the claim's holder died: a forking worker whose work-horse
    was killed calls this with the horse's execution id.
    """
    result = SweepResult()
    record = (
        SequenceRecord.objects.filter(pk=sequence_id, epoch=epoch, claim_token=token)
        .only(*FIELDS)
        .first()
    )
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
    for record in _dead_claims().filter(pk=sequence_id, epoch=epoch).only(*FIELDS):
        recover(record, result, reason=reason)
    return result


class LiveJobs:
    """Which rows still have a live RQ job for their epoch, found with pipelined reads.

    Live: queued (and really in its queue's list), scheduled (and in the scheduled
    registry), deferred, or started by a worker that is not known to be dead. Anything
    else (no job, finished, failed, stopped, canceled) is not.
    """

    def __init__(self) -> None:
        self._listed: dict[str, set[str] | None] = {}
        # (id, epoch) of rows already found live in this sweep: not looked up twice.
        self._seen_live: set[tuple[int, int]] = set()

    def live(self, records: Iterable[SequenceRecord]) -> set[int]:
        from sequence.runner import spec_for

        groups: dict[tuple[Any, ...], list[tuple[SequenceRecord, Any, str]]] = {}
        known: set[int] = set()
        for record in records:
            if (record.pk, record.epoch) in self._seen_live:
                known.add(record.pk)
                continue
            spec = spec_for(record.name, record.plan, record.step_index)
            queue = get_queue((spec and spec.cls.queue) or record.queue)
            kwargs = queue.connection.connection_pool.connection_kwargs
            where = tuple(kwargs.get(k) for k in ("host", "port", "db", "path", "username"))
            jid = job_id(record.pk, record.step_index, record.epoch)
            groups.setdefault(where, []).append((record, queue, jid))
        live = known
        for items in groups.values():
            found = self._check(items)
            self._seen_live.update((r.pk, r.epoch) for r, _, _ in items if r.pk in found)
            live |= found
        return live

    def _check(self, items: list[tuple[SequenceRecord, Any, str]]) -> set[int]:
        connection = items[0][1].connection
        job_key = items[0][1].job_class.key_for
        with connection.pipeline(transaction=False) as pipe:
            for _, _, jid in items:
                pipe.hmget(job_key(jid), "status", "worker_name")
            found = pipe.execute()
        live: set[int] = set()
        queued: list[tuple[SequenceRecord, Any, str]] = []
        scheduled: list[tuple[SequenceRecord, Any, str]] = []
        started: dict[str, list[int]] = {}
        for (record, queue, jid), (status, worker) in zip(items, found, strict=True):
            status = status.decode() if isinstance(status, bytes) else status
            if status == "queued":
                queued.append((record, queue, jid))
            elif status == "scheduled":
                scheduled.append((record, queue, jid))
            elif status == "deferred":
                live.add(record.pk)
            elif status == "started":
                name = worker.decode() if isinstance(worker, bytes) else (worker or "")
                started.setdefault(name, []).append(record.pk)
        if started:
            dead = set(dead_workers().filter(name__in=list(started)).values_list("name", flat=True))
            for name, pks in started.items():
                if name not in dead:
                    live.update(pks)
        live |= self._queued(connection, queued)
        if scheduled:
            with connection.pipeline(transaction=False) as pipe:
                for _, queue, jid in scheduled:
                    pipe.zscore(queue.scheduled_job_registry.key, jid)
                scores = pipe.execute()
            live.update(r.pk for (r, _, _), score in zip(scheduled, scores, strict=True) if score)
        return live

    def _listing(self, connection: Any, queue: Any) -> set[str] | None:
        """The ids waiting in ``queue``, read once per sweep (None: too many to read)."""
        if queue.key not in self._listed:
            with connection.pipeline(transaction=True) as pipe:
                pipe.llen(queue.key)
                pipe.lrange(queue.key, 0, SCAN_LIMIT - 1)
                length, ids = pipe.execute()
            self._listed[queue.key] = None if length > SCAN_LIMIT else {_text(i) for i in ids}
        return self._listed[queue.key]

    def _queued(self, connection: Any, queued: list[tuple[SequenceRecord, Any, str]]) -> set[int]:
        live: set[int] = set()
        suspects = []
        for record, queue, jid in queued:
            listed = self._listing(connection, queue)
            if listed is None or jid in listed:
                live.add(record.pk)
            else:
                suspects.append((record, queue, jid))
        if not suspects:
            return live
        # Not in the list read earlier: queued since, being dequeued, or lost. Look once
        # more, atomically, in the queue and in RQ's intermediate list (a job a worker
        # took but has not started).
        from redis.exceptions import ResponseError

        try:
            with connection.pipeline(transaction=True) as pipe:
                for _, queue, jid in suspects:
                    pipe.lpos(queue.key, jid)
                    pipe.lpos(queue.intermediate_queue_key, jid)
                    pipe.hget(queue.job_class.key_for(jid), "status")
                answers = pipe.execute()
        except ResponseError:  # Redis before 6.0.6 has no LPOS: assume the job is there
            return live | {record.pk for record, _, _ in suspects}
        taken = []
        for index, (record, _, jid) in enumerate(suspects):
            in_list, in_intermediate, status = answers[3 * index : 3 * index + 3]
            if in_list is not None or (status is not None and _text(status) != "queued"):
                live.add(record.pk)  # there after all, or it moved on (started...)
            elif status is not None and in_intermediate is not None:
                taken.append((record, jid))
        return live | self._not_stuck(connection, taken)

    def _not_stuck(self, connection: Any, taken: list[tuple[SequenceRecord, str]]) -> set[int]:
        """Of jobs a worker took but has not started, those taken too recently to judge.

        A worker killed between taking a job and starting it leaves it there; RQ's own
        cleanup of that list runs rarely. The first sweep to see a job there notes the
        time; a later one finding it still there after INTERMEDIATE_GRACE calls it lost.
        """
        if not taken:
            return set()
        now = time.time()
        with connection.pipeline(transaction=False) as pipe:
            for _, jid in taken:
                pipe.set(f"sequence:taken:{jid}", now, nx=True, ex=3600)
                pipe.get(f"sequence:taken:{jid}")
            answers = pipe.execute()
        first_seen = answers[1::2]
        return {
            record.pk
            for (record, _), seen in zip(taken, first_seen, strict=True)
            if seen is None or now - float(seen) < INTERMEDIATE_GRACE
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
