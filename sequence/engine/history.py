"""The history: one row per attempt at a step, as it ended. The one writer of those rows.

Written with a plain ``INSERT`` (it is on every step's path: building it through the
ORM cost a measurable share of a step, see bench/); on PostgreSQL the state machine
appends it to the commit's own statement (``insert_sql(select_from=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Field
from django.utils import timezone

from sequence.models import StepAttempt


@dataclass(frozen=True, kw_only=True)
class Entry:
    """What one history row says: which attempt at which step, and how it ended."""

    sequence_id: int
    step_index: int
    step: str
    epoch: int
    attempt: int
    outcome: str
    started_at: datetime
    worker: str = ""
    error: str = ""
    traceback: str = ""
    item: int | None = None  # a ForEach element's position


def insert_sql(select_from: str = "") -> tuple[str, list[Field[Any, Any]]]:
    """The INSERT of one row and its fields, for this connection's database;
    ``select_from`` inserts from a CTE's row."""
    return _insert_sql(connection.vendor, select_from)


@cache
def _insert_sql(vendor: str, select_from: str) -> tuple[str, list[Field[Any, Any]]]:
    """Built once per database and form (quoting is the vendor's)."""
    fields = [f for f in StepAttempt._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(StepAttempt._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    if select_from:
        return f"INSERT INTO {table} ({columns}) SELECT {values} FROM {select_from}", fields
    return f"INSERT INTO {table} ({columns}) VALUES ({values})", fields


def params(entry: Entry, fields: list[Field[Any, Any]]) -> list[Any]:
    """The row's values for ``fields``, ready for the database; it finished now."""
    values = {
        "sequence_id": entry.sequence_id,
        "step_index": entry.step_index,
        "step": entry.step,
        "epoch": entry.epoch,
        "attempt": entry.attempt,
        "outcome": entry.outcome,
        "started_at": entry.started_at,
        "finished_at": timezone.now(),
        "worker": entry.worker[:200],
        "error": entry.error,
        "traceback": entry.traceback,
        "item": entry.item,
    }
    return [
        f.get_db_prep_save(
            values[f.attname] if f.attname in values else f.get_default(), connection
        )
        for f in fields
    ]


def write(entry: Entry) -> None:
    """Record one attempt (in the caller's transaction, if any)."""
    sql, fields = insert_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, params(entry, fields))
