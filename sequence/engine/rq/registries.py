"""The view of RQ's registries the sweep uses: which rows still have a live job.

Read with pipelines, a batch of rows at a time; a queue's list is read once per sweep
and kept as the hashes of its job ids (``_IdSet``), about 13 bytes per queued job.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db.models import Q, QuerySet
from rq.utils import utcparse

from sequence.declare.conf import settings
from sequence.declare.registry import find_step
from sequence.engine.rq.dispatch import ITEM, get_queue, job_id, queue_for, server_of, unit_of
from sequence.models import SequenceItem, SequenceRecord, WorkerBeat, ago

logger = logging.getLogger("sequence")

# A queue longer than this is not read whole to check that a job is in it; its jobs
# are then taken to be there when their status says "queued".
SCAN_LIMIT = 100_000

# Job ids read from a queue's list per LRANGE when the sweep reads it.
LISTING_CHUNK = 1000

# Seconds after which a job "started" by a worker that keeps no beats of ours (RQ's own
# rqworker) and whose RQ heartbeat stopped counts as lost: RQ's workers beat every job
# at least every 60 s (their job monitoring interval is at most 30 s).
STARTED_JOB_SILENCE = 90

# Seconds a job may sit in RQ's intermediate list (taken by a worker, not started)
# before the sweep calls it lost.
INTERMEDIATE_GRACE = 5


def dead_workers() -> QuerySet[WorkerBeat]:
    """Workers that shut down, or whose last beat is older than SEQUENCE_WORKER_DEAD_AFTER."""
    return WorkerBeat.objects.filter(
        Q(stopped_at__isnull=False) | Q(last_seen__lt=ago(settings.WORKER_DEAD_AFTER))
    )


def _unit_at(record: SequenceRecord) -> tuple[int, int, str, int | None]:
    index, kind, item = unit_of(record)
    return index, record.epoch, kind, item


def _at(plan: list[str], index: int) -> str | None:
    return str(plan[index]) if index < len(plan) else None


def step_name(record: SequenceRecord) -> str | None:
    """The name of the row's current step: read by the sweep's query, or from the plan."""
    if hasattr(record, "current_step_name"):
        name = record.current_step_name
        return None if name is None else str(name)
    plan = record.plan
    return str(plan[record.step_index]) if record.step_index < len(plan) else None


class LiveJobs:
    """Which rows still have a live RQ job for their epoch, found with pipelined reads.

    Live: queued (and really in its queue's list), scheduled (and in the scheduled
    registry), deferred, or started by a worker that is not known to be dead. Anything
    else (no job, finished, failed, stopped, canceled) is not.
    """

    def __init__(self, *, mark: bool = True) -> None:
        # mark=False: write nothing to Redis (a health check); a job a worker took but
        # has not started then counts as live, since judging it needs the mark.
        self._mark = mark
        self._listed: dict[str, _IdSet | None] = {}

    def live(self, records: Iterable[SequenceRecord]) -> set[int]:
        groups: dict[tuple[Any, ...], list[tuple[SequenceRecord, Any, str]]] = {}
        servers: dict[str, tuple[Any, ...]] = {}  # by queue name
        for record in records:
            spec = find_step(record.name, step_name(record))
            queue = get_queue(queue_for(spec, record.queue))
            where = servers.get(queue.name)
            if where is None:
                where = servers[queue.name] = server_of(queue)
            jid = job_id(record.pk, *_unit_at(record))
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
                pipe.hmget(job_key(jid), "status", "worker_name", "last_heartbeat")
            found = pipe.execute()
        live: set[int] = set()
        queued: list[tuple[SequenceRecord, Any, str]] = []
        scheduled: list[tuple[SequenceRecord, Any, str]] = []
        started: dict[str, list[int]] = {}
        beats: dict[int, Any] = {}
        for (record, queue, jid), (status, worker, beat) in zip(items, found, strict=True):
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
                beats[record.pk] = beat
        if started:
            live |= self._started(started, beats)
        live |= self._queued(connection, queued)
        if scheduled:
            with connection.pipeline(transaction=False) as pipe:
                for _, queue, jid in scheduled:
                    pipe.zscore(queue.scheduled_job_registry.key, jid)
                scores = pipe.execute()
            live.update(r.pk for (r, _, _), score in zip(scheduled, scores, strict=True) if score)
        return live

    def live_items(self, items: Iterable[SequenceItem]) -> set[int]:
        """Which ForEach elements (rows with their sequence selected) have a live job."""
        groups: dict[tuple[Any, ...], list[tuple[Any, Any, str]]] = {}
        for item in items:
            record = item.sequence
            spec = find_step(record.name, _at(record.plan, item.step_index))
            queue = get_queue(queue_for(spec, record.queue))
            jid = job_id(record.pk, item.step_index, record.epoch, ITEM, item.index)
            groups.setdefault(server_of(queue), []).append((item, queue, jid))
        live: set[int] = set()
        for group in groups.values():
            live |= self._check(group)
        return live

    def _started(self, started: dict[str, list[int]], beats: dict[int, Any]) -> set[int]:
        """Of jobs a worker started, those whose worker may still be running them.

        A worker of ours says so with its beats (``WorkerBeat``). Another (django-rq's
        ``rqworker``) is judged by the job's own heartbeat in RQ: a job whose worker was
        killed stops beating, though it stays "started" in RQ until RQ's own cleanup.
        """
        names = list(started)
        known = set(WorkerBeat.objects.filter(name__in=names).values_list("name", flat=True))
        dead = set(dead_workers().filter(name__in=names).values_list("name", flat=True))
        cutoff = time.time() - STARTED_JOB_SILENCE
        live: set[int] = set()
        for name, pks in started.items():
            if name in dead:
                continue
            if name in known:
                live.update(pks)
                continue
            for pk in pks:
                beat = _text(beats.get(pk) or "")
                try:
                    if beat and utcparse(beat).timestamp() >= cutoff:
                        live.add(pk)
                except ValueError:
                    live.add(pk)  # a heartbeat we cannot read: assume alive
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
        if not self._mark:
            return {record.pk for record, _ in taken}
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


def requeued_by_hand(job: Any) -> bool:
    """Whether this job was queued again after it failed for good (``rq requeue``).

    A failed sequence's step runs again only then: a duplicate of the failed job that
    was already queued when it failed must not run the step once more.
    """
    from rq.results import Result

    try:
        result = job.latest_result()
    except Exception:
        logger.exception("Could not read the results of job %s", job.id)
        return False
    if result is None or result.type != Result.Type.FAILED or job.enqueued_at is None:
        return False
    enqueued: datetime = job.enqueued_at
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=result.created_at.tzinfo)
    return bool(enqueued > result.created_at)
