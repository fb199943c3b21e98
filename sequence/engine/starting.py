"""Starting a sequence: validate, save, and queue the first step on commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence import signals
from sequence.declare.conf import settings
from sequence.declare.exceptions import ConfigurationError, SequenceBusy
from sequence.declare.validation import check_data
from sequence.engine import hooks, places, steering, tracing
from sequence.engine.rq.dispatch import Work, dispatch, known_queue
from sequence.engine.states import Status
from sequence.models import SequenceRecord, subject_of

if TYPE_CHECKING:
    from sequence.declare.definitions import SequenceDefinition


def start(
    cls: type[SequenceDefinition[Any]],
    data: Mapping[str, Any] | None,
    *,
    key: str | None = None,
    queue: str | None = None,
    subject: models.Model | None = None,
) -> SequenceRecord:
    """Save a new sequence of ``cls`` and queue its first step once the transaction commits.

    ``subject``, a saved model instance, is what the sequence is about (``for_subject``).
    Under the class's ``Concurrency``, a start whose key is full is saved ``queued``
    (or raises ``SequenceBusy``, or cancels the active ones: ``on_busy``).
    """
    if not getattr(cls, "step_specs", None):
        raise ConfigurationError(f"{cls.__qualname__} has no steps; list them in steps = [...].")
    if queue is not None:
        known_queue(queue)
    cleaned = cls.clean(data)
    check_data(cleaned)
    subject_type, subject_id = subject_of(subject) if subject is not None else (None, "")
    flow_key = cls.concurrency.key_of(cleaned) if cls.concurrency is not None else None
    if key is not None:
        existing = SequenceRecord.objects.filter(name=cls.name, key=key).first()
        if existing is not None:
            return existing
    record = SequenceRecord(
        name=cls.name,
        key=key,
        data=cleaned,
        plan=cls.plan_names(),
        version=str(cls.version),
        queue=queue or cls.queue or settings.QUEUE,
        dispatch_due=Now(),
        subject_type=subject_type,
        subject_id=subject_id,
        traceparent=tracing.traceparent(cls.name),
        flow_key=flow_key,
    )
    if key is None and flow_key is None:
        record.save(force_insert=True)
    else:
        try:
            with transaction.atomic():
                if flow_key is not None:
                    take_places(cls, flow_key, [record])
                record.save(force_insert=True)
        except IntegrityError:
            if key is None:
                raise
            # Another request started the same key between our read and write (a
            # cancel_running's cancels were rolled back with the row).
            return SequenceRecord.objects.get(name=cls.name, key=key)
    handle = cls._bind(record)
    if record.status == Status.QUEUED:
        transaction.on_commit(
            lambda: hooks.send(signals.sequence_queued, cls, sequence=handle), robust=True
        )
        return record
    spec = cls.step_specs[0]
    pk = record.pk

    def first_step() -> None:
        dispatch(Work(sequence=pk, index=0, epoch=0), record.queue, spec)
        hooks.send(signals.sequence_started, cls, sequence=handle)

    transaction.on_commit(first_step, robust=True)
    # The in-memory copy shows the database's Now() as this process's clock.
    record.dispatch_due = timezone.now()
    return record


def take_places(
    cls: type[SequenceDefinition[Any]], key: str, records: list[SequenceRecord]
) -> None:
    """Under the lock of the Concurrency ``key``: give the new ``records`` (in order) the
    free places, first to those already queued; queue the rest, or reject them, or cancel
    the active ones first, as ``on_busy`` says. The caller's transaction saves the
    records as this leaves them."""
    concurrency = cls.concurrency
    assert concurrency is not None
    places.lock(cls.name, key)
    held, waiting = places.count(cls.name, key)
    if waiting and held < concurrency.limit:
        # A place freed whose promotion has not run yet: first come first served.
        held += len(places.promote(cls, key))
        waiting = places.count(cls.name, key)[1]
    if held + len(records) > concurrency.limit and concurrency.on_busy == "reject":
        raise SequenceBusy(
            f"{cls.name} already runs {held} sequence(s) with the Concurrency key {key!r} "
            f"(limit={concurrency.limit}); try again when one ends, or use "
            "on_busy='queue' to wait for a place."
        )
    if held + len(records) > concurrency.limit and concurrency.on_busy == "cancel_running":
        steering.cancel_many(SequenceRecord.objects.filter(places.holding(key), name=cls.name))
        held, waiting = places.count(cls.name, key)
    for record in records:
        if held < concurrency.limit and not waiting:
            record.has_place, held = True, held + 1
        else:
            # Behind those waiting (or a compensation, which a cancel does not stop).
            record.status, record.dispatch_due = Status.QUEUED, None
