"""Starting a sequence: validate, save, and queue the first step on commit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from sequence import signals
from sequence.declare.conf import settings
from sequence.declare.exceptions import ConfigurationError
from sequence.declare.validation import check_data
from sequence.engine import hooks, tracing
from sequence.engine.rq.dispatch import Work, dispatch, known_queue
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
    """
    if not getattr(cls, "step_specs", None):
        raise ConfigurationError(f"{cls.__qualname__} has no steps; list them in steps = [...].")
    if queue is not None:
        known_queue(queue)
    cleaned = cls.clean(data)
    check_data(cleaned)
    subject_type, subject_id = subject_of(subject) if subject is not None else (None, "")
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
    )
    if key is None:
        record.save(force_insert=True)
    else:
        try:
            with transaction.atomic():
                record.save(force_insert=True)
        except IntegrityError:
            # Another request started the same key between our read and write.
            return SequenceRecord.objects.get(name=cls.name, key=key)
    spec = cls.step_specs[0]
    pk = record.pk

    def first_step() -> None:
        dispatch(Work(sequence=pk, index=0, epoch=0), record.queue, spec)
        hooks.send(signals.sequence_started, cls, sequence=cls._bind(record))

    transaction.on_commit(first_step, robust=True)
    # The in-memory copy shows the database's Now() as this process's clock.
    record.dispatch_due = timezone.now()
    return record
