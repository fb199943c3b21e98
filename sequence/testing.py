"""Testing your sequences: run every step that is due, here and now, through the real runner.

In the test settings::

    SEQUENCE_TESTING = True     # nothing is queued in Redis; no worker is needed

and in a test (pytest-django's ``db``, a ``django.test.TestCase``, or a transactional
test)::

    from sequence.testing import drain

    seq = ContactFormSequence(name="Ada", email="ada@example.com", body="Hi")
    drain()
    seq.refresh()
    assert seq.status == "completed"

``drain()`` reads what is due from the database, as the recovery sweep does, not from
Redis: the rows are the truth, and inside a test's transaction the on-commit callbacks
that would queue the next job never run. Each unit (a step, or the compensation of a
completed step) runs through ``sequence.runner.run_step``, the function workers call:
claimed, fenced, committed and recorded in the history exactly as in production.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from sequence import runner
from sequence.declare.exceptions import SequenceError
from sequence.declare.registry import spec_for
from sequence.engine import claims, places
from sequence.engine.rq.dispatch import ITEM, retry_of, unit_of
from sequence.engine.states import FANNING, ITEM_TRANSITIONS, MOVING, Status, sources
from sequence.engine.waiting import wake_due
from sequence.models import SequenceItem, SequenceRecord

__all__ = ["MAX_ROUNDS", "DrainLoop", "drain"]

# Rounds drain() runs before it gives up; in a round every due unit runs once. A
# sequence of N steps whose steps each use R retries needs at most N * (R + 1) rounds.
MAX_ROUNDS = 1000

# What ``drain()`` calls itself in the history's ``worker`` column.
WORKER = "drain"


class DrainLoop(SequenceError):
    """Raised when ``drain()`` ran ``MAX_ROUNDS`` rounds and units were still due."""


def drain(*, skip_sleeps: bool = True, fail_fast: bool = False) -> int:
    """Run every unit that is due, in this process, until none is; return the attempts run.

    Retries run at once, without waiting their intervals, and are counted and recorded
    as in production; ``Retry(on=...)`` and ``Fail`` are honoured. With
    ``fail_fast=True`` the first exception a step raises propagates to the caller (after
    it was recorded, as a worker would). ``skip_sleeps`` is for ``Sleep`` items:
    with True (the default) they count as elapsed.
    """
    attempts = 0
    for _ in range(MAX_ROUNDS):
        _wake(skip_sleeps)
        due = list(_due())
        items = list(_due_items())
        if not due and not items:
            return attempts
        for record in due:
            attempts += _run(record, fail_fast)
        for element in items:
            attempts += _run_item(element, fail_fast)
    still = list(_due().values_list("pk", flat=True)[:10])
    raise DrainLoop(
        f"drain() ran {MAX_ROUNDS} rounds and sequences {still!r} are still due: a step, "
        "hook or signal receiver that starts or queues work every time it runs never lets "
        "drain() finish. Make it stop, or run fewer units per test."
    )


def _due() -> QuerySet[SequenceRecord]:
    """The rows whose next unit is due: moving, and nobody holds a claim on them.

    Sleepers are woken first (``_wake``); a waiting row is due only once ``send()``
    made it pending, which this clause covers.
    """
    due = Q(status__in=MOVING)
    return SequenceRecord.objects.filter(due, claim_token__isnull=True).order_by("pk")


def _wake(skip_sleeps: bool) -> None:
    """Wake what is due, as the workers' wake pass would; every sleeper with skip_sleeps.
    Free places of Concurrency keys go to their queued sequences, as after a commit
    that a test's transaction never makes (or the sweep)."""
    if skip_sleeps:
        SequenceRecord.objects.filter(status=Status.SLEEPING).update(wake_at=Now())
    wake_due()
    for name, key in places.waiting_keys():
        places.free(None, name, key)


def _position(pk: int) -> tuple[object, ...] | None:
    """Where a row is: any attempt (claimed, then committed or failed) changes it."""
    return (
        SequenceRecord.objects.filter(pk=pk)
        .values_list("status", "step_index", "epoch", "attempt", "undo_index", "claim_token")
        .first()
    )


def _due_items() -> QuerySet[SequenceItem]:
    """ForEach elements whose job a worker would run now: queued or retrying, unclaimed."""
    return (
        SequenceItem.objects.filter(
            status__in=sources("claim", of=ITEM_TRANSITIONS),
            claim_token__isnull=True,
            sequence__status__in=FANNING,
        )
        .select_related("sequence")
        .order_by("sequence_id", "index")
    )


def _run_item(element: SequenceItem, fail_fast: bool) -> int:
    """Run one element as a worker would; 1 (an attempt ran, or was refused and ends)."""
    record = element.sequence
    left = max(0, retry_of(spec_for(record, element.step_index)).max - element.attempt)
    reset = claims.execution.set(claims.Execution(worker=WORKER, retries_left=left))
    try:
        runner.run_step(record.pk, element.step_index, record.epoch, ITEM, element.index)
    except Exception:
        if fail_fast:
            raise
    finally:
        claims.execution.reset(reset)
    return 1


def _run(record: SequenceRecord, fail_fast: bool) -> int:
    """Run the row's due unit as a worker would; 1 if an attempt ran, else 0."""
    index, kind, item = unit_of(record)
    left = max(0, retry_of(spec_for(record, index)).max - record.attempt)
    before = _position(record.pk)
    reset = claims.execution.set(claims.Execution(worker=WORKER, retries_left=left))
    try:
        runner.run_step(record.pk, index, record.epoch, kind, item)
    except Exception:
        after = _position(record.pk)
        # Recorded by the runner (the row moved and holds no claim): the step's own
        # failure, which a worker would hand to RQ. Anything else is not the step's.
        if fail_fast or after == before or (after is not None and after[-1] is not None):
            raise
        return 1
    finally:
        claims.execution.reset(reset)
    return 0 if _position(record.pk) == before else 1
