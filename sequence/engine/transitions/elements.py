"""A ForEach's elements: each claimed and committed on its own row, failed, or recovered.

Each element is a row of its own with its own claim, so elements never wait on each
other's work; each element's commit counts itself on the sequence row, under that row's
lock, so the commit that counts the last element is the one that moves the sequence on,
once. With ``concurrency`` places, each commit hands its place to the next element not
yet started, in list order.

An element's claim and commit are on every element's path, so they are hand-written SQL
as a step's are (pinned by tests/test_fanout_cost.py); the rarer statements use the ORM.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence.declare.exceptions import StepDeadlineExceeded, StepFenced
from sequence.engine import history
from sequence.engine.claims import Taker, lease_seconds, now_plus_sql, now_sql
from sequence.engine.rq.dispatch import Work
from sequence.engine.states import (
    FANNING,
    IN_FLIGHT,
    ITEM_TRANSITIONS,
    ItemStatus,
    Outcome,
    Status,
    only,
    sources,
)
from sequence.engine.transitions.base import Then
from sequence.models import SequenceItem, SequenceRecord

CLAIMABLE = sources("claim", of=ITEM_TRANSITIONS)


@dataclass(kw_only=True)
class ItemClaim:
    """An element taken by this process: the sequence as read, and the element's fence."""

    record: SequenceRecord
    pk: int  # the element's row
    index: int
    token: str
    worker: str
    started_at: datetime
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
            sequence_id=r.pk, step_index=r.step_index, step=r.plan[r.step_index],
            epoch=r.epoch, attempt=self.attempt, outcome=outcome, started_at=self.started_at,
            worker=self.worker, error=error, traceback=tb, item=self.index,
        )  # fmt: skip


def claim_item(work: Work, taker: Taker) -> ItemClaim | None:
    """Take an element whose job this is, while its ForEach runs; None if the job is stale.

    One statement: the element's row, if its ForEach still runs under this epoch, with
    what the element runs on read from the sequence's row (``RETURNING``). The data and
    the plan come back only if this process has not read them for this ForEach yet.
    """
    assert work.element is not None
    sequence_id, step_index, epoch, index = work.sequence, work.index, work.epoch, work.element
    worker, token, timeout = taker.worker, taker.token, taker.timeout
    _, lease_arg = now_plus_sql(lease_seconds(timeout))
    known = _snapshots.get((sequence_id, epoch))
    held = known.token if known is not None else None
    params = [
        ItemStatus.RUNNING, token, worker[:200], lease_arg,
        sequence_id, step_index, index, *sorted(CLAIMABLE), only("reclaim", of=ITEM_TRANSITIONS), token,
        sequence_id, epoch, step_index, *sorted(FANNING), held, held,
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(_claim_item_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    item_pk, attempt, name, data, plan, version, queue, held_by, done, total, parent = row
    snapshot = known if data is None and known is not None and held_by == held else None
    if snapshot is None:
        if data is None or plan is None:  # not ours after all: read them
            data, plan = SequenceRecord.objects.values_list("data", "plan").get(pk=sequence_id)
        snapshot = _remember((sequence_id, epoch), _Snapshot(held_by, _json(data), _json(plan)))
    record = SequenceRecord(
        pk=sequence_id, name=name, status=Status.RUNNING, data=snapshot.data(),
        plan=list(snapshot.plan), version=version, queue=queue, step_index=step_index,
        epoch=epoch, claim_token=held_by, items_done=done, items_total=total,
        traceparent=parent,
    )  # fmt: skip
    return ItemClaim(
        record=record, pk=item_pk, index=index, token=token, worker=worker,
        started_at=timezone.now(), timeout=timeout, attempt=attempt,
    )  # fmt: skip


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# JSON's values that nothing can change in place.
_SCALARS = frozenset({str, int, float, bool, type(None)})
_SHARED, _COPIED, _DECODED = "shared", "copied", "decoded"


class _Snapshot:
    """The data and the plan a running ForEach's elements see, read once per process.

    Neither changes while the ForEach runs (a change of either takes a new epoch, and a
    ForEach begun again has a new claim token), so the elements of one ForEach a process
    runs share one read of them. Each element still gets data of its own, as if freshly
    read: a value nothing can change in place is shared, a list of such values is copied
    (the usual ForEach list: a copy costs little next to decoding it), and anything else
    is decoded again from its JSON.
    """

    __slots__ = ("parts", "plan", "token")

    def __init__(self, token: str, data: dict[str, Any], plan: list[str]) -> None:
        self.token = token
        self.plan = plan
        self.parts: list[tuple[str, str, Any]] = []
        for key, value in data.items():
            if type(value) in _SCALARS:
                self.parts.append((key, _SHARED, value))
            elif type(value) is list and all(type(v) in _SCALARS for v in value):
                self.parts.append((key, _COPIED, value))
            else:
                self.parts.append((key, _DECODED, json.dumps(value)))

    def data(self) -> dict[str, Any]:
        """A copy of the data for one element, sharing nothing it could change."""
        return {
            key: value if how == _SHARED else value.copy() if how == _COPIED else json.loads(value)
            for key, how, value in self.parts
        }


# The snapshots of the ForEach elements this process ran last, by (sequence, epoch).
_snapshots: OrderedDict[tuple[int, int], _Snapshot] = OrderedDict()
SNAPSHOTS = 8


def _remember(key: tuple[int, int], snapshot: _Snapshot) -> _Snapshot:
    _snapshots[key] = snapshot
    _snapshots.move_to_end(key)
    while len(_snapshots) > SNAPSHOTS:
        _snapshots.popitem(last=False)
    return snapshot


# What an element runs on, read from its sequence's row by its claim; the data and the
# plan only when the claim token of its ForEach is not the one given (see _Snapshot).
_RECORD_COLUMNS = (
    "name", "data", "plan", "version", "queue", "claim_token", "items_done", "items_total",
    "traceparent",
)  # fmt: skip
_KNOWN = ("data", "plan")


@cache
def _claim_item_sql(vendor: str) -> str:
    """The element's claim, for this database."""
    q = connection.ops.quote_name
    items, records = q(SequenceItem._meta.db_table), q(SequenceRecord._meta.db_table)
    now = now_sql()
    lease, _ = now_plus_sql(0)
    claimable = ", ".join(["%s"] * len(CLAIMABLE))
    fanning = ", ".join(["%s"] * len(FANNING))
    claimed = f"""
        SET status = %s, claim_token = %s, claimed_by = %s, claimed_at = {now},
            lease_until = {lease}, dispatch_due = NULL, attempt = i.attempt + 1
    """
    element = f"""
        i.sequence_id = %s AND i.step_index = %s AND i.{q("index")} = %s
        AND (i.status IN ({claimable}) OR (i.status = %s AND i.claim_token = %s))
    """
    running = f"""
        r.id = %s AND r.epoch = %s AND r.step_index = %s AND r.status IN ({fanning})
        AND r.items_total IS NOT NULL AND r.items_failed = 0
    """
    if vendor == "postgresql":
        # As a step's claim, its commit does not wait for the WAL flush: a claim lost in
        # a crash of PostgreSQL leaves the element queued, for the sweep to queue again;
        # the element's own commit, synchronous and later in the WAL, makes it durable.
        relaxed = "(SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"
        returned = ", ".join(_column("r", column) for column in _RECORD_COLUMNS)
        return f"""
            UPDATE {items} AS i {claimed}
            FROM {records} AS r, {relaxed}
            WHERE {element} AND {running} AND r.id = i.sequence_id
            RETURNING i.id, i.attempt, {returned}
        """
    # SQLite's RETURNING cannot name a joined table, nor the updated one by its alias: a
    # subquery per column reads the sequence's row, by its primary key.
    returned = ", ".join(
        f"(SELECT {_column('r', column)} FROM {records} AS r WHERE r.id = {items}.sequence_id)"
        for column in _RECORD_COLUMNS
    )
    return f"""
        UPDATE {items} AS i {claimed}
        WHERE {element} AND EXISTS (SELECT 1 FROM {records} AS r WHERE {running})
        RETURNING id, attempt, {returned}
    """


def _column(table: str, column: str) -> str:
    """A column the claim returns: the data and the plan as NULL when already known."""
    name = f"{table}.{connection.ops.quote_name(column)}"
    if column in _KNOWN:
        return f"CASE WHEN {table}.claim_token = %s THEN NULL ELSE {name} END"
    return name


def count(ic: ItemClaim, **counts: Any) -> SequenceRecord:
    """Count the element on the sequence row (taking its lock); its counts as they are then
    (only those: the data, which holds the whole list, is not read again)."""
    r = ic.record
    SequenceRecord.objects.filter(pk=r.pk, epoch=r.epoch, step_index=r.step_index).update(
        **counts, updated_at=Now()
    )
    fields = ("status", "step_index", "items_done", "items_total", "items_failed")
    return SequenceRecord.objects.only(*fields).get(pk=r.pk)


def in_flight(ic: ItemClaim) -> int:
    r = ic.record
    return SequenceItem.objects.filter(
        sequence_id=r.pk, step_index=r.step_index, status__in=IN_FLIGHT
    ).count()


def commit_item(ic: ItemClaim, result: Any, concurrency: int) -> tuple[Then, list[int]]:
    """Store the element's result and count it; what follows, and positions queued.

    Returns ``("finish", [])`` when it was the last element (the caller moves the
    sequence on), ``("fail", [])`` when it was the last in flight after a failure,
    or ``("go", [next position])``.

    Hand-written SQL, as a step's commit: the element's row (fenced by its token and
    lease), the count on the sequence's row (taking its lock, so the commit that counts
    the last element is the one that moves the sequence on), the history row, then the
    next element queued under that lock. On PostgreSQL all four are one statement.
    """
    r = ic.record
    stored = SequenceItem._meta.get_field("result").get_db_prep_save(result, connection)
    done = [ItemStatus.DONE, stored, ic.pk, ic.token, only("commit", of=ITEM_TRANSITIONS)]
    counted = [r.pk, r.epoch, r.step_index]
    row: list[Any] = [None] * 4
    queued: int | None = None
    if connection.vendor == "postgresql":
        insert, fields = history.insert_sql(select_from="done")
        pending = [r.pk, r.step_index, only("queue", of=ITEM_TRANSITIONS)]
        params = (
            done + counted + sorted(FANNING) + history.params(ic.entry(Outcome.SUCCEEDED), fields)
        )
        params += [ItemStatus.QUEUED, *pending, ic.index, *pending, -1]
        with connection.cursor() as cursor:
            cursor.execute(_commit_item_sql(connection.vendor, insert), params)
            ours, *row, queued = cursor.fetchone()
    else:
        sql_done, sql_counted = _commit_item_sql(connection.vendor, "").split(";")
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql_done, done)
            ours = cursor.rowcount
            if ours:
                cursor.execute(sql_counted, counted)
                row = list(cursor.fetchone() or (None,) * 4)
                history.write(ic.entry(Outcome.SUCCEEDED))
                if _next_queued(row):
                    queued = _queue_next(r.pk, r.step_index, after=ic.index)
    if not ours:
        if ic.mine().exists():
            raise StepDeadlineExceeded(
                f"element {ic.index} reached the database after its lease; not committed."
            )
        raise StepFenced(f"element {ic.index} lost its claim; its result is discarded.")
    status, items_done, items_total, items_failed = row
    if status is None:
        return Then.GO_ON, []  # the ForEach this element ran in is over (a new epoch)
    if items_failed:
        return (Then.FAIL if not in_flight(ic) else Then.GO_ON), []
    if items_done >= (items_total or 0):
        return Then.FINISH, []
    return Then.GO_ON, [] if queued is None else [queued]


def _next_queued(row: list[Any]) -> bool:
    """Whether a commit that counted its element to ``row`` hands its place on."""
    status, items_done, items_total, items_failed = row
    return status in FANNING and not items_failed and items_done < (items_total or 0)


@cache
def _commit_item_sql(vendor: str, insert: str) -> str:
    """The element's commit for this database (``insert``: the history row from ``done``
    on PostgreSQL); on SQLite, its first two statements joined by ``;``.

    On PostgreSQL the next element is queued in the same statement. Its count waits for
    the sequence row's lock, held by a commit that queued an element meanwhile, which
    the statement's snapshot (taken before the wait) still shows as not started; the
    search for the next element locks what it finds (``FOR UPDATE``), which reads each
    row found as it is now and passes over the one that was queued, so no place is lost.
    It runs after the count (it reads the count's row), under the sequence row's lock;
    as on SQLite it looks past the committing element first, as the index keeps an entry
    for each version of a queued element's row until a vacuum, which a search from the
    start would step over, each time.
    """
    q = connection.ops.quote_name
    items, records = q(SequenceItem._meta.db_table), q(SequenceRecord._meta.db_table)
    now = now_sql()
    done = f"""
        UPDATE {items}
        SET status = %s, result = %s, error = '', dispatch_due = NULL, claim_token = NULL,
            claimed_by = '', claimed_at = NULL, lease_until = NULL
        WHERE id = %s AND claim_token = %s AND status = %s AND lease_until > {now}
    """
    counted = f"""
        UPDATE {records} SET items_done = items_done + 1, updated_at = {now}
        WHERE id = %s AND epoch = %s AND step_index = %s
    """
    counts = "RETURNING status, items_done, items_total, items_failed"
    if vendor != "postgresql":
        return f"{done};{counted} {counts}"
    fanning = ", ".join(["%s"] * len(FANNING))
    index = q("index")
    pending = _first_pending("AND EXISTS (SELECT 1 FROM go)", "FOR UPDATE SKIP LOCKED")
    return f"""
        WITH done AS ({done} RETURNING id),
            counted AS ({counted} AND EXISTS (SELECT 1 FROM done) {counts}),
            go AS (
                SELECT 1 FROM counted WHERE status IN ({fanning}) AND items_failed = 0
                    AND items_done < items_total
            ),
            written AS ({insert}),
            queued AS (
                UPDATE {items} SET status = %s, dispatch_due = {now}
                WHERE id = COALESCE(({pending}), ({pending}))
                RETURNING {index}
            )
        SELECT (SELECT count(*) FROM done), c.status, c.items_done, c.items_total,
            c.items_failed, (SELECT {index} FROM queued)
        FROM (SELECT 1) AS one LEFT JOIN counted c ON TRUE
    """


def _first_pending(condition: str = "", lock: str = "") -> str:
    """The first element not started past a position, in list order. Its parameters: the
    sequence, the step, the pending status and the position (-1: from the start)."""
    q = connection.ops.quote_name
    index = q("index")
    return f"""
        SELECT id FROM {q(SequenceItem._meta.db_table)}
        WHERE sequence_id = %s AND step_index = %s AND status = %s AND {index} > %s {condition}
        ORDER BY {index} LIMIT 1 {lock}
    """


def _queue_next(sequence_id: int, step_index: int, after: int) -> int | None:
    """Queue the first element not started, in list order: the place a commit hands on
    (under the sequence row's lock, which the commit's count took). On SQLite.

    Looked for past ``after`` first (the committing element's position: elements are
    queued in list order, so those not started come after it), then from the start.
    """
    q = connection.ops.quote_name
    items, index = q(SequenceItem._meta.db_table), q("index")
    first = _first_pending()
    sql = f"""
        UPDATE {items} SET status = %s, dispatch_due = {now_sql()}
        WHERE id = COALESCE(({first}), ({first})) AND status = %s
        RETURNING {index}
    """
    pending = only("queue", of=ITEM_TRANSITIONS)
    params: list[Any] = [ItemStatus.QUEUED, sequence_id, step_index, pending, after]
    params += [sequence_id, step_index, pending, -1, pending]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return None if row is None else row[0]
