"""Starting many sequences at once: every element checked first, rows inserted in
batches, the first steps queued in one Redis pipeline once the transaction commits.

The rows and jobs are exactly those ``starting.start`` makes one at a time (the same
outbox entry, job ids ``seq-{id}-0-0``, options and serializer); only the number of
statements and round trips differs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connection, models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence import signals
from sequence.declare.conf import settings
from sequence.declare.exceptions import ConfigurationError, InvalidData
from sequence.declare.validation import check_data
from sequence.engine import hooks, tracing
from sequence.engine.rq.dispatch import confirm_dispatch, enqueue_first_steps, known_queue
from sequence.engine.starting import take_places
from sequence.engine.states import Status
from sequence.models import SequenceRecord, subject_of

if TYPE_CHECKING:
    from sequence.declare.definitions import SequenceDefinition

logger = logging.getLogger("sequence")

# Rows per INSERT (and per lookup of existing keys, and per outbox UPDATE): well under
# SQLite's limit on variables per statement, and a bounded statement on PostgreSQL.
BATCH = 1000


def start_many(
    cls: type[SequenceDefinition[Any]],
    datas: Iterable[Mapping[str, Any] | None],
    *,
    keys: Sequence[str | None] | None = None,
    subjects: Sequence[models.Model | None] | None = None,
    queue: str | None = None,
) -> list[SequenceRecord]:
    """Save a sequence of ``cls`` per element of ``datas``; return the records in order.

    Raises InvalidData naming the element's position (and key) before anything is saved.
    With ``keys``, an element whose key was started before (or earlier in the same call)
    gets that sequence instead of a new one. The first steps are queued in one Redis
    pipeline once the transaction commits.
    """
    if not getattr(cls, "step_specs", None):
        raise ConfigurationError(f"{cls.__qualname__} has no steps; list them in steps = [...].")
    if queue is not None:
        known_queue(queue)
    datas = list(datas)
    keys = _parallel("keys", keys, len(datas))
    about = [
        subject_of(obj) if obj is not None else (None, "")
        for obj in _parallel("subjects", subjects, len(datas))
    ]
    cleaned = [_clean(cls, data, index, keys[index]) for index, data in enumerate(datas)]
    flow_keys = [_flow_key(cls, data, index) for index, data in enumerate(cleaned)]
    queue = queue or cls.queue or settings.QUEUE
    parent = tracing.traceparent(cls.name)  # one trace for the call's sequences

    # Which element each record comes from: the first element with a key takes it.
    first_of: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key is not None:
            first_of.setdefault(key, index)
    records: list[SequenceRecord | None] = [None] * len(datas)
    with transaction.atomic():
        existing = _existing(cls, list(first_of))
        new = [
            (index, _record(cls, data, keys[index], queue, about[index], parent, flow_keys[index]))
            for index, data in enumerate(cleaned)
            if keys[index] is None
            or (keys[index] not in existing and first_of[keys[index]] == index)
        ]
        _take_places(cls, [record for _, record in new])
        created = _insert(cls, new, existing)
        waiting = [record for _, record in created if record.status == Status.QUEUED]
        if waiting:
            # Inserted with the outbox entry every row shares: a queued one has none.
            SequenceRecord.objects.filter(pk__in=[r.pk for r in waiting]).update(dispatch_due=None)
        for index, record in created:
            records[index] = record
        for index, key in enumerate(keys):
            if records[index] is None and key is not None:
                records[index] = existing.get(key) or records[first_of[key]]
        started = [record for _, record in created if record.status != Status.QUEUED]
        transaction.on_commit(lambda: _first_steps(cls, started, waiting, queue), robust=True)
    now = timezone.now()
    for record in started:
        # The in-memory copy shows the database's Now() as this process's clock.
        record.dispatch_due = now
    for record in waiting:
        record.dispatch_due = None
    assert all(record is not None for record in records)
    return records  # type: ignore[return-value]


def _record(
    cls: type[SequenceDefinition[Any]],
    data: dict[str, Any],
    key: str | None,
    queue: str,
    about: tuple[Any, str],
    traceparent: str,
    flow_key: str | None,
) -> SequenceRecord:
    """The row ``start()`` saves, its outbox entry due now (on the database's clock)."""
    return SequenceRecord(
        name=cls.name,
        key=key,
        data=data,
        plan=cls.plan_names(),
        version=str(cls.version),
        queue=queue,
        dispatch_due=Now(),
        subject_type=about[0],
        subject_id=about[1],
        traceparent=traceparent,
        flow_key=flow_key,
    )


def _flow_key(cls: type[SequenceDefinition[Any]], data: dict[str, Any], index: int) -> str | None:
    if cls.concurrency is None:
        return None
    try:
        return cls.concurrency.key_of(data)
    except InvalidData as exc:
        raise InvalidData(f"datas[{index}]: {exc}") from exc


def _take_places(cls: type[SequenceDefinition[Any]], records: list[SequenceRecord]) -> None:
    """Each Concurrency key's places to its new rows, in order: one lock per key, taken
    in the keys' order so that two calls never wait for each other's."""
    by_key: dict[str, list[SequenceRecord]] = {}
    for record in records:
        if record.flow_key is not None:
            by_key.setdefault(record.flow_key, []).append(record)
    for key in sorted(by_key):
        take_places(cls, key, by_key[key])


def _parallel(name: str, values: Sequence[Any] | None, n: int) -> list[Any]:
    if values is None:
        return [None] * n
    if isinstance(values, str | bytes) or len(values) != n:
        raise InvalidData(
            f"{name} must be a list parallel to datas ({n} entries, None where there is "
            f"none), not {values!r:.80}."
        )
    return list(values)


def _clean(
    cls: type[SequenceDefinition[Any]], data: Mapping[str, Any] | None, index: int, key: Any
) -> dict[str, Any]:
    where = f"datas[{index}]" + (f" (key {key!r})" if key is not None else "")
    if key is not None and not isinstance(key, str):
        raise InvalidData(f"{where}: a key is a string, not {type(key).__name__} {key!r:.80}.")
    try:
        cleaned = cls.clean(data)
        check_data(cleaned)
    except InvalidData as exc:
        raise InvalidData(f"{where}: {exc}") from exc
    return cleaned


def _existing(cls: type[SequenceDefinition[Any]], keys: list[str]) -> dict[str, SequenceRecord]:
    """The sequences of ``cls`` already started with one of ``keys``, by key."""
    found: dict[str, SequenceRecord] = {}
    for at in range(0, len(keys), BATCH):
        chunk = keys[at : at + BATCH]
        for record in SequenceRecord.objects.filter(name=cls.name, key__in=chunk):
            assert record.key is not None
            found[record.key] = record
    return found


def _insert(
    cls: type[SequenceDefinition[Any]],
    new: list[tuple[int, SequenceRecord]],
    existing: dict[str, SequenceRecord],
) -> list[tuple[int, SequenceRecord]]:
    """Insert the new rows in batches; a key another request took meanwhile is looked up.

    Fills ``existing`` with the keys found taken.
    """
    created: list[tuple[int, SequenceRecord]] = []
    for at in range(0, len(new), BATCH):
        batch = new[at : at + BATCH]
        while batch:
            try:
                with transaction.atomic():
                    _insert_rows([record for _, record in batch])
                break
            except IntegrityError:
                # Another request started one of these keys between our read and write.
                taken = _existing(cls, [r.key for _, r in batch if r.key is not None])
                if not taken:
                    raise
                existing.update(taken)
                batch = [(index, r) for index, r in batch if r.key not in taken]
        if any(record.pk is None for _, record in batch):
            raise ConfigurationError(
                "start_many needs a database that returns the ids of inserted rows "
                "(PostgreSQL, SQLite 3.35+); start the sequences one by one with start()."
            )
        created += batch
    return created


def _first_steps(
    cls: type[SequenceDefinition[Any]],
    records: list[SequenceRecord],
    waiting: list[SequenceRecord],
    queue: str,
) -> None:
    """After the commit: queue every first step in one pipeline, then announce each
    (and each queued one)."""
    for record in waiting:
        hooks.send(signals.sequence_queued, cls, sequence=cls._bind(record))
    pks = [record.pk for record in records]
    if not pks:
        return
    try:
        enqueue_first_steps(pks, queue, cls.step_specs[0])
    except Exception:
        logger.exception(
            "Could not queue the first steps of %s new %s sequences; the recovery sweep will.",
            len(pks),
            cls.name,
        )
    else:
        for at in range(0, len(pks), BATCH):
            confirm_dispatch({0: pks[at : at + BATCH]})
    for record in records:
        hooks.send(signals.sequence_started, cls, sequence=cls._bind(record))


# The columns that differ between the rows of one start_many; every other column holds
# the same value in all of them (``_record``).
VARYING = ("key", "data", "subject_type", "subject_id", "status", "flow_key", "has_place")


def _insert_rows(records: list[SequenceRecord]) -> None:
    """INSERT the rows in one statement and set each record's ``pk``.

    Django's ``bulk_create`` binds every column of every row, which for 1,000 rows is
    30,000 parameters prepared one by one. Here the shared columns are parameters once
    and the varying ones travel as one JSON array the database expands (``json_each``,
    ``jsonb_array_elements``), in order: the ids the rows get ascend with their
    positions. Other databases take ``bulk_create``.
    """
    vendor = connection.vendor
    if (
        vendor not in ("sqlite", "postgresql")
        or not connection.features.can_return_rows_from_bulk_insert
    ):
        SequenceRecord.objects.bulk_create(records)
        return
    pg = vendor == "postgresql"
    first, quote = records[0], connection.ops.quote_name
    columns, values, params = _shared_columns(first, pg)
    fields = {f.name: f for f in SequenceRecord._meta.concrete_fields}
    for position, name in enumerate(VARYING):
        field = fields[name]
        columns.append(quote(str(field.column)))
        if not pg:
            values.append(f"json_extract(e.value, '$[{position}]')")
        elif isinstance(field, models.JSONField):
            values.append(f"e.value -> {position}")
        else:
            values.append(f"(e.value ->> {position})::{field.db_type(connection)}")
    if pg:
        source = "jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(value, n) ORDER BY e.n"
    else:
        source = "json_each(%s) AS e ORDER BY e.key"
    rows = [
        [r.key, r.data, r.subject_type_id, r.subject_id, r.status, r.flow_key, r.has_place]
        for r in records
    ]
    params.append(json.dumps(rows, separators=(",", ":")))
    table = quote(SequenceRecord._meta.db_table)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "
        f"FROM {source} RETURNING {quote('id')}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = sorted(pk for (pk,) in cursor.fetchall())
    for record, pk in zip(records, ids, strict=True):
        record.pk = pk
        record.created_at, record.updated_at = first.created_at, first.updated_at
        record._state.adding, record._state.db = False, connection.alias


def _shared_columns(first: SequenceRecord, pg: bool) -> tuple[list[str], list[str], list[Any]]:
    """The columns every row holds as ``first`` does (less those left NULL): their
    quoted names, their SQL (a parameter, or the outbox's ``Now()``) and parameters."""
    query = SequenceRecord.objects.all().query
    compiler = query.get_compiler(connection=connection)
    columns: list[str] = []
    values: list[str] = []
    params: list[Any] = []
    for field in SequenceRecord._meta.concrete_fields:
        if field.primary_key or field.name in VARYING:
            continue
        value = field.pre_save(first, add=True)  # the created and updated times, once
        if hasattr(value, "resolve_expression"):
            sql, args = compiler.compile(value.resolve_expression(query))
        else:
            value = field.get_db_prep_save(value, connection)
            if value is None:
                continue
            sql, args = (f"%s::{field.db_type(connection)}" if pg else "%s"), [value]
        columns.append(connection.ops.quote_name(str(field.column)))
        values.append(sql)
        params.extend(args)
    return columns, values, params
