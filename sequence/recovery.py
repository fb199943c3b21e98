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

A sweep runs in every worker's maintenance thread, and what it holds at once the worker
keeps (freed, it stays with the allocator). So it holds one batch of rows at a time,
reads only the current step's name of each plan, and keeps of each queue's list only
the hashes of its job ids: about 13 bytes per queued job, the one thing that grows
with the sequences in flight besides the ids ``SweepResult.confirmed`` returns.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    ExpressionWrapper,
    F,
    Func,
    Q,
    QuerySet,
    When,
)
from django.db.models import DateTimeField as DateTimeOutput
from django.db.models.functions import Now

from sequence.conf import settings
from sequence.definitions import StepSpec, find_step
from sequence.dispatch import dispatch, get_queue, job_id
from sequence.models import SequenceRecord, StepAttempt, WorkerBeat
from sequence.states import Outcome, Status

logger = logging.getLogger("sequence")

# Fields the sweep reads; ``data`` is loaded only for a sequence it fails. Of the plan
# only the current step's name is read (``_CurrentStep``): a whole plan is a list of
# every step's name, which in a batch of rows would cost more than the rest together.
FIELDS = (
    "id", "name", "step_index", "epoch", "queue", "status", "attempt", "recoveries",
    "claim_token", "claimed_by", "claimed_at", "lease_until", "dispatch_due", "updated_at",
)  # fmt: skip

# A queue longer than this is not read whole to check that a job is in it; its jobs
# are then taken to be there when their status says "queued".
SCAN_LIMIT = 100_000

# Job ids read from a queue's list per LRANGE when the sweep reads it.
LISTING_CHUNK = 1000

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


class _CurrentStep(Func):
    """The name of the row's current step, ``plan[step_index]``, read in the database."""

    # SQLite: JSON_EXTRACT(plan, '$[' || step_index || ']')
    template = "JSON_EXTRACT(%(expressions)s || ']')"
    arg_joiner = ", '$[' || "
    output_field = CharField()

    def __init__(self) -> None:
        super().__init__(F("plan"), F("step_index"))

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # plan ->> step_index
        return self.as_sql(
            compiler, connection, template="(%(expressions)s)", arg_joiner=" ->> ", **extra
        )


def _read(queryset: QuerySet[SequenceRecord]) -> QuerySet[SequenceRecord]:
    """The sweep's view of rows: ``FIELDS`` and the current step's name."""
    return queryset.only(*FIELDS).annotate(current_step_name=_CurrentStep())


def _batches(queryset: QuerySet[SequenceRecord], size: int) -> Iterator[list[SequenceRecord]]:
    """The rows of ``queryset`` in batches of ``size``, by id (keyset, never OFFSET).

    A batch is emptied when the next one is asked for, so that one batch at a time is in
    memory however many rows the sweep reads.
    """
    last = 0
    while True:
        batch = list(_read(queryset.filter(id__gt=last)).order_by("id")[:size])
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
    for batch in _batches(_dead_claims(), size):
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
    for batch in _batches(_maybe_lost(grace), size):
        _lost_jobs(batch, jobs, result)
    for batch in _batches(_overdue(grace), size):
        _overdue_entries(batch, jobs, result)
    WorkerBeat.objects.filter(last_seen__lt=_ago(FORGET_WORKERS_AFTER.total_seconds())).delete()
    if result.redispatched or result.failed or result.released:
        logger.warning("Recovery sweep: %s", result)
    return result


def _lost_jobs(batch: list[SequenceRecord], jobs: LiveJobs, result: SweepResult) -> None:
    live = jobs.live(batch)
    for record in batch:
        if record.pk not in live:
            recover(record, result, reason="RQ holds no job for its step")


def _overdue_entries(batch: list[SequenceRecord], jobs: LiveJobs, result: SweepResult) -> None:
    active = [r for r in batch if r.status in (Status.PENDING, Status.RETRYING)]
    live = jobs.live(active)
    # Paused, canceled, finished or claimed (nothing to queue), or queued after all.
    done = [r for r in batch if r.pk in live or r not in active]
    result.confirmed.extend(_clear_outbox(done))
    for record in active:
        if record.pk not in live:
            recover(record, result, reason="its next step was never queued")


def _step_name(record: SequenceRecord) -> str | None:
    """The name of the row's current step: read by the sweep's query, or from the plan."""
    if hasattr(record, "current_step_name"):
        name = record.current_step_name
        return None if name is None else str(name)
    plan = record.plan
    return str(plan[record.step_index]) if record.step_index < len(plan) else None


def _step(record: SequenceRecord) -> str:
    name = _step_name(record)
    return "?" if name is None else name


def _spec(record: SequenceRecord) -> StepSpec | None:
    """The current definition of the row's current step, if it still exists."""
    return find_step(record.name, _step_name(record))


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
        spec = _spec(record)

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
    record = _read(
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
    for record in _read(_dead_claims().filter(pk=sequence_id, epoch=epoch)):
        recover(record, result, reason=reason)
    return result


class LiveJobs:
    """Which rows still have a live RQ job for their epoch, found with pipelined reads.

    Live: queued (and really in its queue's list), scheduled (and in the scheduled
    registry), deferred, or started by a worker that is not known to be dead. Anything
    else (no job, finished, failed, stopped, canceled) is not.
    """

    def __init__(self) -> None:
        self._listed: dict[str, _IdSet | None] = {}

    def live(self, records: Iterable[SequenceRecord]) -> set[int]:
        groups: dict[tuple[Any, ...], list[tuple[SequenceRecord, Any, str]]] = {}
        servers: dict[str, tuple[Any, ...]] = {}  # by queue name
        for record in records:
            spec = _spec(record)
            queue = get_queue((spec and spec.cls.queue) or record.queue)
            where = servers.get(queue.name)
            if where is None:
                kwargs = queue.connection.connection_pool.connection_kwargs
                where = tuple(kwargs.get(k) for k in ("host", "port", "db", "path", "username"))
                servers[queue.name] = where
            jid = job_id(record.pk, record.step_index, record.epoch)
            groups.setdefault(where, []).append((record, queue, jid))
        live: set[int] = set()
        for items in groups.values():
            live |= self._check(items)
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

    def _listing(self, connection: Any, queue: Any) -> _IdSet | None:
        """The ids waiting in ``queue``, read once per sweep (None: too many to read).

        Read a chunk at a time, not atomically: an id that moves up the list while it is
        read (the jobs ahead of it were taken) can be missed, never invented, and a
        missed id only costs the second look in ``_queued``.
        """
        if queue.key not in self._listed:
            with connection.pipeline(transaction=True) as pipe:
                pipe.llen(queue.key)
                pipe.lrange(queue.key, 0, LISTING_CHUNK - 1)
                length, ids = pipe.execute()
            listed = None
            if length <= SCAN_LIMIT:
                listed = _IdSet(length)
                for start in range(0, length, LISTING_CHUNK):
                    if start:
                        last = min(length, start + LISTING_CHUNK) - 1
                        ids = connection.lrange(queue.key, start, last)
                    for jid in ids:
                        listed.add(_text(jid))
            self._listed[queue.key] = listed
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


class _IdSet:
    """Strings (a queue's job ids) kept as their 64-bit hashes in one flat array.

    About 13 bytes per id where a ``set`` of ``str`` takes about 100: the sweep reads a
    whole queue, and a set would make the worker's memory grow with the jobs queued (up
    to SCAN_LIMIT), in the maintenance thread that never gives it back. Two ids with
    equal hashes (Python's string hash, keyed per process) would make a lost job look
    queued; even at SCAN_LIMIT the odds are below one in a billion per sweep.
    """

    def __init__(self, capacity: int) -> None:
        # Open addressing with linear probing, at most 60% full; 0 marks a free slot.
        self._slots = array("q", [0]) * max(8, capacity * 5 // 3 + 1)

    def _find(self, h: int) -> int:
        slots, size = self._slots, len(self._slots)
        i = h % size
        while slots[i] and slots[i] != h:
            i = (i + 1) % size
        return i

    def add(self, item: str) -> None:
        h = hash(item) or 1
        self._slots[self._find(h)] = h

    def __contains__(self, item: object) -> bool:
        h = hash(item) or 1
        return self._slots[self._find(h)] == h


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
