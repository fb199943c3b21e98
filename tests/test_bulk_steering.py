"""Steering many at once: SequenceRecord's queryset pause(), resume() and cancel(), one
statement each, the signals after commit, the jobs after commit, and the command."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rq.registry import StartedJobRegistry

from sequence import signals
from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import TERMINAL, Status
from sequence.models import SequenceQuerySet, SequenceRecord, StepAttempt
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import Arithmetic, Slow, ThreeSteps

from .conftest import wait_for
from .lifecycle_support import make_record, queued_jobs, run_jobs
from .test_command import sequence


class Received:
    def __init__(self, signal: Any) -> None:
        self.ids: list[int] = []
        self.signal = signal

    def __call__(self, sender: Any, sequence: Any, **kwargs: Any) -> None:
        self.ids.append(sequence.id)

    def __enter__(self) -> Received:
        self.signal.connect(self, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.signal.disconnect(self)


def statuses(*ids: int) -> list[str]:
    by_id = dict(SequenceRecord.objects.filter(pk__in=ids).values_list("pk", "status"))
    return [by_id[pk] for pk in ids]


def updates_of(queries: CaptureQueriesContext) -> list[dict[str, str]]:
    return [q for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]


def updates(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in updates_of(queries)]


@pytest.mark.django_db
def test_every_status_has_a_queryset_method_named_after_it_that_finds_its_rows():
    rows = {status: make_record(status=status) for status in Status}
    for status in Status:
        method = getattr(SequenceRecord.objects.all(), status.value)
        assert isinstance(SequenceRecord.objects.all(), SequenceQuerySet)
        assert list(method()) == [rows[status]], status


@pytest.mark.django_db(transaction=True)
def test_pause_changes_only_the_rows_pause_applies_to_and_counts_them():
    rows = {s: make_record(status=s) for s in Status}
    with Received(signals.sequence_paused) as paused, CaptureQueriesContext(connection) as q:
        count = SequenceRecord.objects.all().pause()
    pausable = (Status.QUEUED, Status.PENDING, Status.RUNNING, Status.RETRYING, Status.SLEEPING)
    pausable += (Status.WAITING,)
    assert count == len(pausable)
    assert len(updates(q)) == 1
    for status, record in rows.items():
        record.refresh_from_db()
        moved = status in pausable
        assert record.status == (Status.PAUSED if moved else status)
    expected = [rows[s].pk for s in pausable]
    assert sorted(paused.ids) == sorted(expected)


@pytest.mark.django_db(transaction=True)
def test_signals_wait_for_the_commit_and_a_rollback_sends_none():
    seq = ThreeSteps.start({})
    with Received(signals.sequence_paused) as paused:
        with transaction.atomic():
            assert ThreeSteps.records().pause() == 1
            assert paused.ids == []
        assert paused.ids == [seq.id]
        SequenceRecord.objects.filter(pk=seq.id).update(status=Status.PENDING)
        with transaction.atomic():
            ThreeSteps.records().pause()
            transaction.set_rollback(True)
        assert paused.ids == [seq.id]
        assert statuses(seq.id) == [Status.PENDING]


@pytest.mark.django_db(transaction=True)
def test_records_are_one_class_and_a_record_gives_its_handle():
    three, arithmetic = ThreeSteps.start({}), Arithmetic.start({"n": 2})
    assert [r.pk for r in ThreeSteps.records()] == [three.id]
    assert ThreeSteps.records().pending().count() == 1
    handle = SequenceRecord.objects.get(pk=arithmetic.id).handle()
    assert isinstance(handle, Arithmetic)
    assert handle.id == arithmetic.id


@pytest.mark.django_db(transaction=True)
def test_resume_queues_each_next_step_once_and_they_run_to_the_end():
    seqs = [ThreeSteps.start({}) for _ in range(5)]
    assert ThreeSteps.records().pause() == 5
    run_jobs()  # the queued jobs find their sequences paused and end
    assert Ledger.objects.count() == 0
    assert queued_jobs() == []
    with Received(signals.sequence_resumed) as resumed:
        assert ThreeSteps.records().paused().resume() == 5
    assert sorted(resumed.ids) == sorted(s.id for s in seqs)
    assert len(queued_jobs()) == 5
    assert SequenceRecord.objects.filter(dispatch_due__isnull=False).count() == 0
    run_jobs()
    assert statuses(*(s.id for s in seqs)) == [Status.COMPLETED] * 5
    assert ThreeSteps.records().resume() == 0  # nothing paused is left


@pytest.mark.django_db(transaction=True)
def test_a_resumed_row_whose_step_is_still_in_flight_goes_back_to_running():
    in_flight = make_record(status=Status.PAUSED, claim_token="abc", epoch=4)
    idle = make_record(status=Status.PAUSED, epoch=4)
    assert SequenceRecord.objects.resume() == 2
    in_flight.refresh_from_db()
    idle.refresh_from_db()
    assert (in_flight.status, in_flight.epoch, in_flight.dispatch_due) == (Status.RUNNING, 4, None)
    assert (idle.status, idle.epoch) == (Status.PENDING, 5)
    assert queued_jobs() == [f"seq-{idle.pk}-0-5"]


@pytest.mark.django_db(transaction=True)
def test_cancel_deletes_the_queued_jobs_and_sends_one_signal_each(redis_db):
    seqs = [ThreeSteps.start({}) for _ in range(4)]
    done = ThreeSteps.start({})
    SequenceRecord.objects.filter(pk=done.id).update(status=Status.COMPLETED)
    with Received(signals.sequence_canceled) as canceled:
        assert ThreeSteps.records().cancel() == 4
    assert sorted(canceled.ids) == sorted(s.id for s in seqs)
    assert queued_jobs() == [f"seq-{done.id}-0-0"]
    assert redis_db.keys("rq:job:*") == [f"rq:job:seq-{done.id}-0-0".encode()]
    assert all(r.finished_at is not None for r in ThreeSteps.records().canceled())


@pytest.mark.django_db(transaction=True)
def test_the_command_steers_by_name_and_status_and_prints_the_count():
    for _ in range(3):
        ThreeSteps.start({})
    Arithmetic.start({"n": 1})
    out, _ = sequence("pause", "--name", "testapp.ThreeSteps", "--status", "pending")
    assert out.strip() == "Paused 3 testapp.ThreeSteps sequences that were pending."
    out, _ = sequence("resume", "--name", "testapp.ThreeSteps")
    assert out.strip() == "Resumed 3 testapp.ThreeSteps sequences."
    out, _ = sequence("cancel", "--name", "testapp.Arithmetic", "--json")
    assert '"changed": 1' in out
    # A name no sequence has: said, with the registered names it may have meant.
    out, _ = sequence("pause", "--name", "ThreeSteps")
    assert out.splitlines() == [
        "Paused 0 ThreeSteps sequences.",
        "No sequence is named 'ThreeSteps': names are app_label.ClassName. "
        "Did you mean testapp.ThreeSteps?",
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="one database is enough for a minute of 10,000 sequences: PostgreSQL's pass runs it",
)
@pytest.mark.django_db(transaction=True)
def test_ten_thousand_running_sequences_pause_in_one_update_and_no_step_starts_after(workers):
    total = 10_000
    Slow.start_many([{"sleep": 0.01}] * total)
    workers.start(2)
    wait_for(lambda: Ledger.objects.count() >= 20, timeout=60, message="steps running")

    with CaptureQueriesContext(connection) as queries:
        paused = Slow.records().pause()
    returned = timezone.now()
    assert len(updates(queries)) == 1
    # No receiver is connected: no row is read back, only the transaction is opened.
    others = [q["sql"].split()[0] for q in queries if q not in updates_of(queries)]
    assert set(others) <= {"BEGIN", "COMMIT"}, others
    finished = Slow.records().filter(status__in=TERMINAL).count()
    assert paused == total - finished
    assert paused > total // 2

    # The jobs still queued are delivered after the call returned: each finds its
    # sequence paused and ends without starting its step (a thousand of them are enough
    # to see it; delivering all would only take longer).
    left = len(queued_jobs())
    wait_for(
        lambda: len(queued_jobs()) <= max(0, left - 1000), timeout=120, message="jobs delivered"
    )
    assert not StepAttempt.objects.filter(started_at__gt=returned).exists()
    assert not SequenceRecord.objects.filter(claimed_at__gt=returned).exists()
    assert Slow.records().exclude(status__in=[Status.PAUSED, Status.COMPLETED]).count() == 0

    # The stale jobs still queued would only delay the resumed ones behind them.
    get_queue("default").empty()
    # Resumed all at once, then canceled all at once while the workers run them.
    ran = Ledger.objects.count()
    assert Slow.records().resume() == paused
    wait_for(lambda: Ledger.objects.count() >= ran + 40, timeout=60, message="steps run again")
    canceled = Slow.records().cancel()
    stopped = timezone.now()
    assert canceled > 0
    assert queued_jobs() == []  # the canceled sequences' jobs are deleted, not delivered
    # A step claimed before the cancel commits, and starts nothing after it.
    started = StartedJobRegistry(queue=get_queue("default"))
    wait_for(lambda: not started.get_job_ids(), timeout=30, message="the last jobs ended")
    assert not StepAttempt.objects.filter(started_at__gt=stopped).exists()
    assert Slow.records().exclude(status__in=[Status.CANCELED, Status.COMPLETED]).count() == 0
