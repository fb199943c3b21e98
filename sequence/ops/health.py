"""Health at a glance: workers and backlog per queue, sequences by status, and what is stuck.

``gather()`` only reads. Its database work is a fixed handful of statements whatever the
number of sequences: a GROUP BY over the records (which also counts, by the recovery
sweep's own conditions, the rows the sweep would take back), one read of the worker
rows, and, for jobs RQ lost, one bounded batch checked in Redis as the sweep does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import BooleanField, Case, Count, Q, Value, When

from sequence.declare.conf import settings
from sequence.declare.registry import find_step, registered, spec_for
from sequence.engine.recovery import (
    CurrentStep,
    dead_claim,
    maybe_lost,
    overdue_entry,
    read,
    unconfirmed_move,
)
from sequence.engine.rq.dispatch import get_queue, queue_for
from sequence.engine.rq.registries import LiveJobs, dead_workers
from sequence.engine.states import QUEUED, TERMINAL, Status
from sequence.models import SequenceRecord, WorkerBeat, ago

# "Failed in the last hour".
RECENT = timedelta(hours=1)
# Job ids read from the head of a queue to find the oldest one still stored.
HEAD = 10


@dataclass(frozen=True, kw_only=True)
class Worker:
    """A live worker process on a queue."""

    name: str
    host: str
    pid: int
    # "beat": our WorkerBeat row; "rq": RQ's worker registry only (django-rq's rqworker).
    source: str


@dataclass(frozen=True, kw_only=True)
class QueueHealth:
    """One queue that sequences use."""

    name: str
    workers: tuple[Worker, ...]
    length: int | None  # jobs waiting in RQ's list; None when Redis did not answer
    oldest_age: float | None  # seconds the first waiting job has waited
    waiting: int  # pending or retrying sequences whose current step runs on this queue
    error: str = ""  # what Redis said when it did not answer


@dataclass(frozen=True, kw_only=True)
class Stuck:
    """Sequences past the recovery sweep's thresholds (``sequence.engine.recovery``)."""

    dead_claims: int  # a claim whose lease ran out or whose worker is dead
    overdue_outbox: int  # a due dispatch older than SEQUENCE_DISPATCH_GRACE
    lost_jobs: int  # pending or retrying, not updated within the grace, no live RQ job
    lost_checked: bool  # False: more candidates than were looked up; lost_jobs is a floor

    @property
    def total(self) -> int:
        return self.dead_claims + self.overdue_outbox + self.lost_jobs


@dataclass(frozen=True, kw_only=True)
class Health:
    """What ``sequence health`` reports; ``problems`` empty means healthy."""

    checked_at: datetime
    queues: tuple[QueueHealth, ...]
    by_status: dict[str, int]
    retrying: int
    failed_last_hour: int
    stuck: Stuck
    waiting_without_worker: int
    # False: finished statuses count only the sequences finished within the last hour.
    whole_table: bool = True
    problems: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        """What ``sequence health`` exits with: 0 healthy, 1 not."""
        return 0 if self.healthy else 1

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the fields, with ``healthy`` and the stuck total."""
        found = asdict(self)
        found["checked_at"] = self.checked_at.isoformat()
        found["stuck"]["total"] = self.stuck.total
        found["problems"] = list(self.problems)
        found["healthy"] = self.healthy
        for queue in found["queues"]:
            queue["workers"] = list(queue["workers"])
        found["queues"] = list(found["queues"])
        return found


def gather(*, lost_jobs: bool = True, whole_table: bool = True) -> Health:
    """Read the health of every queue and sequence; changes nothing.

    The admin's list passes both False: ``lost_jobs=False`` skips looking jobs up in
    Redis row by row (two database statements in all; ``Stuck.lost_jobs`` is 0 and not
    checked), and ``whole_table=False`` counts finished sequences only if they finished
    within the hour, so the statement reads the rows in flight and the recent ones
    through their indexes instead of every row ever kept.
    """
    grace = float(settings.DISPATCH_GRACE)
    groups = _groups(grace, whole_table)
    by_status = {str(status): 0 for status in Status}
    failed_last_hour = dead = overdue = maybe_lost = 0
    used: dict[str, None] = dict.fromkeys(_defined_queues())
    waiting: dict[str, int] = {}
    for row in groups:
        status, count = row["status"], row["n"]
        by_status[status] = by_status.get(status, 0) + count
        if status == Status.FAILED:
            failed_last_hour += row["recent"]
        dead += row["dead"]
        overdue += row["overdue"]
        maybe_lost += row["maybe_lost"]
        if status in TERMINAL:
            continue
        used[row["queue"]] = None
        spec = find_step(row["name"], row["step"])
        queue = (spec and spec.cls.queue) or row["queue"]
        used[queue] = None
        if status in (Status.PENDING, Status.RETRYING):
            waiting[queue] = waiting.get(queue, 0) + count
    beats = _beats()
    queues = tuple(_queue(name, beats, waiting.get(name, 0)) for name in used)
    lost, checked = 0, True
    if lost_jobs and maybe_lost:
        lost, checked = _lost(grace, maybe_lost)
    elif not lost_jobs:
        checked = False
    stuck = Stuck(dead_claims=dead, overdue_outbox=overdue, lost_jobs=lost, lost_checked=checked)
    without = sum(q.waiting for q in queues if not q.workers)
    return Health(
        checked_at=datetime.now(UTC),
        queues=queues,
        by_status=by_status,
        retrying=by_status.get(Status.RETRYING, 0),
        failed_last_hour=failed_last_hour,
        stuck=stuck,
        waiting_without_worker=without,
        whole_table=whole_table,
        problems=tuple(_problems(queues, stuck, grace)),
    )


def _defined_queues() -> Iterable[str]:
    """SEQUENCE_QUEUE, then every registered sequence's queue and its steps' queues."""
    yield settings.QUEUE
    for cls in registered().values():
        if cls.queue:
            yield cls.queue
        for spec in cls.step_specs:
            if spec.cls.queue:
                yield spec.cls.queue


def _groups(grace: float, whole_table: bool) -> list[dict[str, Any]]:
    """Records by status, queue, sequence and current step, with counts.

    The current step is read only for rows still in flight (it picks the queue their
    next job goes to); the groups are bounded by the code's sequences and steps, not by
    the rows. Stuck rows are counted by the sweep's own conditions.

    With ``whole_table`` one GROUP BY reads every row. Without, the rows in flight are
    grouped through the status index and the finished ones of the last hour counted
    through the finished index, in a second statement: a single statement with both
    sets OR-ed together lets the planner walk the status index over every row kept.
    """
    recent = Q(finished_at__gte=ago(RECENT.total_seconds()))
    step = Case(When(status__in=list(TERMINAL), then=Value(None)), default=CurrentStep())
    records = SequenceRecord.objects.order_by()
    if not whole_table:
        records = records.filter(status__in=[s for s in Status if s not in TERMINAL])
    rows = [
        dict(row)
        for row in records.values("status", "queue", "name", step=step).annotate(
            n=Count("pk"),
            recent=Count("pk", filter=recent),
            dead=Count("pk", filter=dead_claim()),
            overdue=Count("pk", filter=overdue_entry(grace)),
            maybe_lost=Count("pk", filter=unconfirmed_move(grace)),
        )
    ]
    if not whole_table:
        # No GROUP BY: one count per finished status over the index's range.
        finished = SequenceRecord.objects.order_by().filter(recent)
        counts = finished.aggregate(**{s: Count("pk", filter=Q(status=s)) for s in TERMINAL})
        stuck = {"dead": 0, "overdue": 0, "maybe_lost": 0}  # finished rows are never stuck
        rows += [
            {"status": s, "queue": None, "name": None, "step": None, "n": n, "recent": n, **stuck}
            for s, n in counts.items()
            if n
        ]
    return rows


def no_worker_note(record: SequenceRecord) -> str:
    """For a sequence whose step waits in its queue: a line saying no live worker listens
    there (and how to start one), or "" when one does (or the queue cannot be read)."""
    if record.status not in QUEUED:
        return ""
    name = queue_for(spec_for(record), record.queue)
    queue = _queue(name, _beats(), 0)
    if queue.workers or queue.error:
        return ""
    return (
        f"no live worker listens on queue {name!r}: start `python manage.py sequence worker {name}`"
    )


def _beats() -> list[WorkerBeat]:
    """Every worker row, each marked ``alive`` by the sweep's rule (database clock)."""
    dead = dead_workers().values("pk")
    alive = Case(When(pk__in=dead, then=False), default=True, output_field=BooleanField())
    return list(WorkerBeat.objects.annotate(alive=alive).order_by("name"))


def _queue(name: str, beats: list[WorkerBeat], waiting: int) -> QueueHealth:
    ours = [b for b in beats if name in b.queues.split(",")]
    workers = {
        b.name: Worker(name=b.name, host=b.host, pid=b.pid, source="beat")
        for b in ours
        if getattr(b, "alive", False)
    }
    # Our workers register with RQ too: a name we know is dead by its beats stays dead
    # even while RQ's key for it has not expired yet.
    known = {b.name for b in beats}
    try:
        length, oldest, registered_workers = _redis(name)
    except Exception as exc:
        return QueueHealth(
            name=name, workers=tuple(workers.values()), length=None, oldest_age=None,
            waiting=waiting, error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
    for worker in registered_workers:
        if worker.name not in workers and worker.name not in known:
            workers[worker.name] = Worker(
                name=worker.name, host=worker.hostname or "", pid=int(worker.pid or 0), source="rq"
            )
    return QueueHealth(
        name=name, workers=tuple(workers.values()), length=length, oldest_age=oldest,
        waiting=waiting,
    )  # fmt: skip


def _redis(name: str) -> tuple[int, float | None, list[Any]]:
    """The queue's length, the age of its oldest stored job, and RQ's live workers on it."""
    from rq import Worker as RQWorker
    from rq.utils import utcparse

    queue = get_queue(name)
    connection = queue.connection
    with connection.pipeline(transaction=True) as pipe:
        pipe.llen(queue.key)
        pipe.lrange(queue.key, 0, HEAD - 1)
        length, head = pipe.execute()
    oldest = None
    if head:
        with connection.pipeline(transaction=False) as pipe:
            for jid in head:
                pipe.hget(queue.job_class.key_for(_text(jid)), "enqueued_at")
            stamps = pipe.execute()
        # The first id whose job still exists: a deleted job's id can linger in the list.
        for stamp in stamps:
            if stamp:
                enqueued = utcparse(_text(stamp)).replace(tzinfo=UTC)
                oldest = max(0.0, (datetime.now(UTC) - enqueued).total_seconds())
                break
    return int(length), oldest, RQWorker.all(queue=queue)


def _lost(grace: float, candidates: int) -> tuple[int, bool]:
    """Of the rows that may have lost their job, those RQ holds no live job for.

    At most one sweep batch is looked up: with more candidates the count is a floor.
    """
    size = max(1, int(settings.SWEEP_BATCH))
    batch = list(read(maybe_lost(grace)).order_by("id")[:size])
    try:
        live = LiveJobs(mark=False).live(batch)
    except Exception:
        return 0, False  # Redis did not answer: each queue's entry says so
    return sum(1 for r in batch if r.pk not in live), candidates <= size


def _problems(queues: tuple[QueueHealth, ...], stuck: Stuck, grace: float) -> Iterable[str]:
    for queue in queues:
        if queue.error:
            yield (
                f"queue {queue.name!r}: Redis did not answer ({queue.error}); check "
                f"RQ_QUEUES[{queue.name!r}] and that its Redis server is up"
            )
        if not queue.workers:
            waits = _count(queue.waiting, "sequence waits", "sequences wait")
            yield (
                f"queue {queue.name!r} has no live worker: {waits} on it; "
                f"start `python manage.py sequence worker {queue.name}`"
            )
    recover = "the recovery sweep takes them back; run `python manage.py sequence recover`"
    if stuck.dead_claims:
        holds = _count(stuck.dead_claims, "sequence holds", "sequences hold")
        yield (
            f"{holds} a claim whose lease ran out or whose worker is dead: {recover}, "
            "and check that workers run the sweep (SEQUENCE_RECOVER_INTERVAL)"
        )
    if stuck.overdue_outbox:
        has = _count(stuck.overdue_outbox, "sequence has", "sequences have")
        yield f"{has} a step due for over {grace:g}s that was never confirmed queued: {recover}"
    if stuck.lost_jobs:
        floor = "" if stuck.lost_checked else "at least "
        has = _count(
            stuck.lost_jobs,
            "pending or retrying sequence has",
            "pending or retrying sequences have",
        )
        yield f"{floor}{has} no job in RQ for its step (was Redis flushed?): {recover}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- for people ---------------------------------------------------------------------------


def summary(health: Health) -> list[str]:
    """The counts as short phrases: sequences in flight by status, the last hour, stuck."""
    phrases = [
        f"{health.by_status.get(status, 0)} {Status(status).label.lower()}"
        for status in Status
        if status not in TERMINAL
    ]
    phrases.append(f"{health.failed_last_hour} failed in the last hour")
    floor = "" if health.stuck.lost_checked else "+"
    phrases.append(f"{health.stuck.total}{floor} stuck")
    return phrases


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    return f"{whole // 3600}h"


def report_lines(health: Health) -> list[str]:
    """The report as lines for a terminal: a table per queue, the counts, the problems."""
    lines = [f"Sequence health: {'OK' if health.healthy else 'UNHEALTHY'}"]
    lines.append("")
    for queue in health.queues:
        length = "?" if queue.length is None else str(queue.length)
        lines.append(
            f"Queue {queue.name}: {length} queued, oldest {_age(queue.oldest_age)}, "
            f"{queue.waiting} sequences waiting, {len(queue.workers)} live workers"
        )
        for worker in queue.workers:
            lines.append(f"  {worker.name:<40} {worker.host}:{worker.pid} ({worker.source})")
    lines.append("")
    counts = ", ".join(f"{n} {status}" for status, n in health.by_status.items())
    lines.append(f"Sequences: {counts}")
    stuck = health.stuck
    floor = "" if stuck.lost_checked else "+"
    lines.append(
        f"Failed in the last hour: {health.failed_last_hour}; retrying: {health.retrying}; "
        f"stuck: {stuck.total}{floor} ({stuck.dead_claims} dead claims, "
        f"{stuck.overdue_outbox} overdue dispatches, {stuck.lost_jobs}{floor} lost jobs)"
    )
    if health.problems:
        lines.append("")
        lines.append("Problems:")
        lines.extend(f"  - {problem}" for problem in health.problems)
    return lines
