"""Pause, resume and cancel on many rows: one conditional UPDATE each.

The statement acts on the rows of a queryset that are in a status ``states.TRANSITIONS``
lets its action start from, and returns what changed (``UPDATE ... RETURNING``, which
PostgreSQL and SQLite both have and ``QuerySet.update()`` does not give). Rows in other
statuses are left as they are. The same rules as the single-row requests
(``transitions.requests``): a resumed row whose step still holds its claim goes back to
running, any other resumed row is pending with a new epoch and its outbox entry set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet

from sequence.engine.claims import now_sql
from sequence.engine.states import Status, sources
from sequence.engine.transitions.base import status_in
from sequence.models import SequenceRecord


@dataclass(frozen=True)
class Changed:
    """One row a bulk statement changed, as it is afterwards (what its caller needs)."""

    id: int
    name: str
    status: str
    step_index: int
    epoch: int
    queue: str
    plan: list[str]


# The columns a statement returns for each row it changed, in Changed's order.
RETURNED = "id, name, status, step_index, epoch, queue, plan"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _changed(rows: list[tuple[Any, ...]]) -> list[Changed]:
    return [
        Changed(pk, name, status, index, epoch, queue, _json(plan))
        for pk, name, status, index, epoch, queue, plan in rows
    ]


def _update(
    queryset: QuerySet[SequenceRecord],
    action: str,
    set_sql: str,
    set_args: list[Any],
    target: Status | None = None,
) -> list[Changed]:
    """``UPDATE ... SET set_sql WHERE <action's sources> AND id IN (queryset) RETURNING``."""
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    # The queryset as a subquery of ids: its filters, slices and joins as the user wrote
    # them; the status condition is checked again on the row the UPDATE changes.
    ids_sql, ids_args = queryset.order_by().values("pk").query.sql_with_params()
    where_sql, where_args = status_in(sources(action, target))
    sql = (
        f"UPDATE {table} SET {set_sql} WHERE {where_sql} AND id IN ({ids_sql}) RETURNING {RETURNED}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*set_args, *where_args, *ids_args])
        return _changed(cursor.fetchall())


def pause(queryset: QuerySet[SequenceRecord]) -> list[Changed]:
    """Paused: the step in flight finishes, a queued job finds the row paused and ends."""
    now = now_sql()
    return _update(queryset, "pause", f"status = %s, updated_at = {now}", [Status.PAUSED])


def resume(queryset: QuerySet[SequenceRecord]) -> list[Changed]:
    """Running again where the step in flight holds its claim; waiting again in a WaitFor;
    sleeping again in a Sleep whose time has not come; queued again if paused before it
    had a place under its Concurrency; pending (due) elsewhere.

    One statement, with the same rules as the single resume: a row whose claim is held,
    or that waits, keeps its epoch; one that is due gets a new epoch and its outbox entry.
    """
    now = now_sql()
    held = "claim_token IS NOT NULL"
    placeless = "flow_key IS NOT NULL AND NOT has_place"
    waits = "waiting_for <> ''"
    sleeps = f"wake_at > {now}"
    kept = f"{held} OR {placeless} OR {waits} OR {sleeps}"
    return _update(
        queryset,
        "resume",
        f"status = CASE WHEN {held} THEN %s WHEN {placeless} THEN %s WHEN {waits} THEN %s "
        f"WHEN {sleeps} THEN %s ELSE %s END, "
        f"epoch = epoch + CASE WHEN {kept} THEN 0 ELSE 1 END, "
        f"dispatch_due = CASE WHEN {kept} THEN dispatch_due ELSE {now} END, "
        f"wake_at = CASE WHEN {kept} THEN wake_at ELSE NULL END, "
        f"updated_at = {now}",
        [Status.RUNNING, Status.QUEUED, Status.WAITING, Status.SLEEPING, Status.PENDING],
    )


def cancel(queryset: QuerySet[SequenceRecord]) -> list[Changed]:
    """Canceled, with no compensation: nothing further starts, the outbox entry cleared.

    The epoch is returned as it was, so the caller can delete the job queued under it.
    """
    now = now_sql()
    return _update(
        queryset,
        "cancel",
        f"status = %s, dispatch_due = NULL, finished_at = {now}, updated_at = {now}, "
        "wake_at = NULL, waiting_for = ''",
        [Status.CANCELED],
        Status.CANCELED,
    )


def wake(queryset: QuerySet[SequenceRecord]) -> list[Changed]:
    """Sleepers of ``queryset`` whose time came, pending with their next step due.

    For sleeps that are not the last item of their plan (a last one completes the
    sequence: ``transitions.wake``, one row at a time). Conditional on the wake-up
    time, so two passes racing each other wake each row once.
    """
    now = now_sql()
    return _update(
        queryset.filter(status=Status.SLEEPING, wake_at__isnull=False).extra(
            where=[f"wake_at <= {now}"]
        ),
        "wake",
        f"status = %s, epoch = epoch + 1, wake_at = NULL, dispatch_due = {now}, updated_at = {now}",
        [Status.PENDING],
        Status.PENDING,
    )
