"""The history: one row per attempt at a step, as it ended. The one writer of those rows.

Written with a plain ``INSERT`` (it is on every step's path: building it through the
ORM cost a measurable share of a step, see bench/); on PostgreSQL the state machine
appends it to the commit's own statement (``insert_sql(select_from=...)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Field
from django.utils import timezone

from sequence.declare.conf import settings
from sequence.models import StepAttempt

# What a change too large to keep shows instead of its values.
TOO_LARGE = "(too large to keep)"


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
    # What the attempt changed in the data (see ``changes``); empty when it failed.
    changes: dict[str, Any] = field(default_factory=dict)


def changes(before: Any, after: dict[str, Any]) -> dict[str, Any]:
    """What became of ``before`` (the data as loaded, or its JSON text) in ``after``.

    ``{"added": {key: new}, "changed": {key: [old, new]}, "removed": [key, ...]}`` over
    the top-level keys, each part left out when empty (``{}``: nothing changed). Over
    ``SEQUENCE_HISTORY_CHANGE_LIMIT`` bytes of JSON, the keys are kept and every value
    is ``TOO_LARGE``.
    """
    old = json.loads(before) if isinstance(before, str) else before or {}
    added = {key: value for key, value in after.items() if key not in old}
    changed = {
        key: [value, after[key]]
        for key, value in old.items()
        if key in after and after[key] != value
    }
    removed = [key for key in old if key not in after]
    change: dict[str, Any] = {}
    if added:
        change["added"] = added
    if changed:
        change["changed"] = changed
    if removed:
        change["removed"] = removed
    if change and len(json.dumps(change, default=str)) > settings.HISTORY_CHANGE_LIMIT:
        if added:
            change["added"] = dict.fromkeys(added, TOO_LARGE)
        if changed:
            change["changed"] = {key: [TOO_LARGE, TOO_LARGE] for key in changed}
        change["too_large"] = True
    return change


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
        "changes": entry.changes,
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
