"""The places of a ``Concurrency`` key: taken at a start, given to the next queued
sequence when one frees.

Exactness rests on the database, never on Redis: every admission to a key (a start, a
promotion) first takes that key's lock row (``FlowLock``, an upsert: the row lock on
PostgreSQL, the write lock on SQLite), then counts the places under it. A sequence's
end frees its place by its status alone, in the transaction that ends it; the move
that follows (``moves.after_move``) then promotes the next queued one, and the
recovery sweep does for a process that died in between (``waiting_keys``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, transaction
from django.db.models import Count, Q
from django.utils import timezone

from sequence import signals
from sequence.declare.registry import registered
from sequence.engine import hooks
from sequence.engine.rq.dispatch import dispatch_many
from sequence.engine.states import Status
from sequence.engine.transitions.places import admit
from sequence.models import LIVE, FlowLock, SequenceRecord

if TYPE_CHECKING:
    from sequence.declare.definitions import SequenceDefinition

logger = logging.getLogger("sequence")


def lock(name: str, key: str) -> None:
    """Take the lock of ``key`` of the class ``name`` until the transaction ends."""
    FlowLock.objects.bulk_create(
        [FlowLock(name=name, key=key, locked_at=timezone.now())],
        update_conflicts=True,
        unique_fields=["name", "key"],
        update_fields=["locked_at"],
    )


def holding(key: str) -> Q:
    """The rows that hold a place under ``key`` (of the class the caller filters on)."""
    return LIVE & Q(flow_key=key, has_place=True)


def count(name: str, key: str) -> tuple[int, int]:
    """How many sequences of ``name`` hold a place under ``key``, and how many wait."""
    found = SequenceRecord.objects.filter(LIVE, name=name, flow_key=key).aggregate(
        held=Count("pk", filter=Q(has_place=True)),
        waiting=Count("pk", filter=Q(status=Status.QUEUED)),
    )
    return found["held"], found["waiting"]


def promote(cls: type[SequenceDefinition[Any]], key: str) -> list[int]:
    """Under ``key``'s lock (the caller's transaction), admit the queued sequences its
    free places allow, oldest first; their first steps are queued after the commit.
    Returns their ids."""
    assert cls.concurrency is not None
    held, waiting = count(cls.name, key)
    free = cls.concurrency.limit - held
    if not waiting or free <= 0:
        return []
    ids = admit(cls.name, key, min(free, waiting))
    if ids:
        transaction.on_commit(lambda: _started(cls, ids), robust=True)
    return ids


def free(cls: type[SequenceDefinition[Any]] | None, name: str, key: str) -> list[int]:
    """After a sequence of ``key`` ended (or one was queued again): give its place to the
    next queued one, in a transaction of its own."""
    cls = cls or registered().get(name)
    if cls is None or cls.concurrency is None:
        return []
    with transaction.atomic():
        lock(name, key)
        return promote(cls, key)


def free_of(cls: type[SequenceDefinition[Any]] | None, record: SequenceRecord) -> None:
    """``free`` for the key of ``record``, if its class counts by one. A database error
    is logged: the sweep gives the place (``waiting_keys``)."""
    cls = cls or registered().get(record.name)
    if cls is None or cls.concurrency is None:
        return
    try:
        key = record.flow_key
        if key is None:
            # The runner's copy of the row may lack the column: read it.
            key = (
                SequenceRecord.objects.filter(pk=record.pk)
                .values_list("flow_key", flat=True)
                .first()
            )
        if key is not None:
            free(cls, record.name, key)
    except DatabaseError:
        logger.exception(
            "Could not give the place of %s to the next queued sequence; the sweep will.", record
        )


def waiting_keys() -> list[tuple[str, str]]:
    """Every (class name, key) with a queued sequence: what the sweep looks at."""
    rows = SequenceRecord.objects.queued().filter(flow_key__isnull=False)
    pairs = rows.values_list("name", "flow_key").distinct().order_by("name", "flow_key")
    return [(name, key) for name, key in pairs if key is not None]


def _started(cls: type[SequenceDefinition[Any]], ids: list[int]) -> None:
    """After the commit that admitted them: queue their steps, announce them."""
    records = list(SequenceRecord.objects.filter(pk__in=ids))
    dispatch_many(records)
    for record in records:
        logger.info("Sequence %s got a place under its key %r.", record, record.flow_key)
        hooks.send(signals.sequence_started, cls, sequence=cls._bind(record))
