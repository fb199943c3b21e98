"""``Sequence``: the class users subclass, and the handle on one stored sequence.

A subclass declares its steps (see ``sequence.declare.definitions``) and is registered by name;
an instance is a handle: load, refresh, wait, pause, resume, cancel, retry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from collections.abc import Sequence as ListOf
from typing import Any, Self

from django.db import models

from sequence.declare import registry
from sequence.declare.definitions import D, SequenceDefinition
from sequence.declare.exceptions import (
    SequenceCanceled,
    SequenceFailed,
    SequenceTimeout,
    UnknownSequence,
)
from sequence.declare.masking import mask_changes, mask_text
from sequence.engine import starting_many, steering, waiting
from sequence.engine.starting import start
from sequence.engine.states import Outcome, Status
from sequence.models import SequenceQuerySet, SequenceRecord, StepAttempt


class Sequence(SequenceDefinition[D]):
    """An ordered chain of steps. Subclass it, list ``steps``, and instantiate it to start.

    An instance is a handle on one stored sequence. ``class Order(Sequence[OrderData])``
    types ``seq.data`` as ``OrderData``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.step_specs:
            registry.register(cls)

    def __init__(self, **data: Any) -> None:
        """Start a sequence with ``data`` as keyword arguments."""
        self._load(start(type(self), data))

    @classmethod
    def start(
        cls,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        queue: str | None = None,
        subject: models.Model | None = None,
    ) -> Self:
        """Save a sequence with ``data`` and queue its first step once the transaction commits.

        ``subject`` links it to a saved model instance (an order, a user): see
        ``for_subject``.
        """
        return cls._bind(start(cls, data, key=key, queue=queue, subject=subject))

    @classmethod
    def records(cls) -> SequenceQuerySet:
        """This class's ``SequenceRecord`` rows (every class's, on ``Sequence`` itself).

        Filter them like any queryset; ``pause()``, ``resume()`` and ``cancel()`` steer
        every row that allows it, in one statement each.
        """
        rows = SequenceRecord.objects.all()
        return rows.filter(name=cls.name) if getattr(cls, "step_specs", None) else rows

    @classmethod
    def for_subject(cls, obj: models.Model) -> list[Self]:
        """The sequences started with ``subject=obj``, newest first, as a list of handles.

        One indexed query. ``MySequence.for_subject`` returns that class's sequences;
        ``Sequence.for_subject`` every class's (each handle of its own class; a row
        whose class is no longer registered is left out).
        """
        found = []
        for record in cls.records().for_subject(obj):
            try:
                found.append(registry.load(record, cls))
            except UnknownSequence:
                continue
        return found

    @classmethod
    def start_many(
        cls,
        datas: Iterable[Mapping[str, Any] | None],
        *,
        keys: ListOf[str | None] | None = None,
        subjects: ListOf[models.Model | None] | None = None,
        queue: str | None = None,
    ) -> list[Self]:
        """Start a sequence per element of ``datas``: rows in batches, one Redis round trip.

        Every element is checked before anything is saved; the handles come back in order.
        """
        records = starting_many.start_many(cls, datas, keys=keys, subjects=subjects, queue=queue)
        return [cls._bind(record) for record in records]

    @classmethod
    def get(cls, id: int | str | None = None, *, key: str | None = None) -> Self:
        """Load the sequence with this id, or the one started with this ``key``.

        ``Sequence.get`` finds its class; ``MySequence.get(key=...)`` looks among its own.
        """
        if (id is None) == (key is None):
            raise TypeError("get() takes a sequence id or key=..., not both or neither.")
        if key is None:
            return registry.load(SequenceRecord.objects.find(id), cls)  # type: ignore[arg-type]
        record = SequenceRecord.objects.filter(key=key)
        if getattr(cls, "step_specs", None):
            record = record.filter(name=cls.name)
        found = list(record.order_by("-id")[:2])
        if not found:
            raise UnknownSequence(f"No {cls.__name__} was started with the key {key!r}.")
        if len(found) > 1:
            raise UnknownSequence(
                f"Several sequences were started with the key {key!r}; "
                f"use {found[0].name.rsplit('.', 1)[-1]}.get(key=...) to say which."
            )
        return registry.load(found[0], cls)

    def refresh(self) -> None:
        """Reload the state from the database."""
        self._record.refresh_from_db()
        self._load(self._record)

    def wait(self, timeout: float = 30) -> D:
        """Block until the sequence finishes; return its data or raise why it did not."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            self.refresh()
            if self.status == Status.COMPLETED:
                return self.data
            if self.status == Status.FAILED:
                raise SequenceFailed(f"{self.name} #{self.id} failed: {self.error}")
            if self.status == Status.CANCELED:
                raise SequenceCanceled(f"{self.name} #{self.id} was canceled.")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SequenceTimeout(
                    f"{self.name} #{self.id} is still {self.status} at step "
                    f"{self.current_step!r} after {timeout}s; wait longer or check its workers."
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.25)

    def send(
        self, event: str, data: Mapping[str, Any] | None = None, *, id: str | None = None
    ) -> None:
        """Deliver ``event`` (its ``data`` is merged into the data when a WaitFor takes it).

        An event sent before the sequence reaches its ``WaitFor`` is kept until it does.
        With ``id``, the same event id sent again is accepted and ignored.
        """
        waiting.send(self.id, event, data, id=id)
        self.refresh()

    def history(self) -> list[dict[str, Any]]:
        """Every attempt at a step, oldest first: ``step``, ``attempt``, ``outcome``,
        ``started_at``, ``finished_at``, ``error`` and ``changes`` (what it changed in
        the data), masked as the admin masks them."""
        record = SequenceRecord.objects.only("data", "status", "step_index", "epoch").get(
            pk=self.id
        )
        rows = list(StepAttempt.objects.filter(sequence_id=self.id).order_by("id"))
        return [
            {
                "step": row.step,
                "attempt": row.attempt,
                "outcome": outcome,
                "started_at": row.started_at,
                "finished_at": row.finished_at,
                "error": mask_text(row.error, record.data),
                "changes": mask_changes(row.changes),
            }
            for row, outcome in zip(rows, _outcomes(rows, record), strict=True)
        ]

    def pause(self) -> None:
        """Let the step in flight finish; start no further step until resume()."""
        self._load(steering.pause(self.id))

    def resume(self) -> None:
        """Continue a paused sequence from its next step."""
        self._load(steering.resume(self.id))

    def cancel(self, compensate: bool = False) -> None:
        """Start no further step; the sequence ends ``canceled``.

        With ``compensate=True`` the completed steps' compensations run first, last first.
        """
        self._load(steering.cancel(self.id, compensate=compensate))

    def retry(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        from_step: str | None = None,
        force: bool = False,
    ) -> None:
        """Run the failed step again, after merging ``data`` into the data.

        ``from_step`` moves the sequence onto its class's current plan and version and
        carries on from that step. After compensations ran, ``force=True`` is needed.
        """
        self._load(steering.retry(self.id, data, from_step=from_step, force=force))


def _outcomes(rows: list[StepAttempt], record: SequenceRecord) -> list[str]:
    """Each row's outcome as ``history()`` says it: a failed attempt that RQ tried again
    (or is about to: the last row, of the step the sequence is retrying) is ``retrying``.
    One pass from the newest row, keeping each unit's highest attempt seen after."""
    outcomes: list[str] = []
    tried: dict[tuple[int, int, int | None], int] = {}
    for newest, row in enumerate(reversed(rows)):
        unit = (row.step_index, row.epoch, row.item)
        outcome = str(row.outcome)
        if outcome == Outcome.FAILED and (
            tried.get(unit, 0) > row.attempt
            or (
                newest == 0
                and row.item is None
                and record.status == Status.RETRYING
                and (record.step_index, record.epoch) == (row.step_index, row.epoch)
            )
        ):
            outcome = "retrying"
        tried[unit] = max(tried.get(unit, 0), row.attempt)
        outcomes.append(outcome)
    return outcomes[::-1]
