"""Failing steps: retries, final failure with compensation, and resuming from the failed step."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection
from rq.registry import FailedJobRegistry

from sequence import SequenceCanceled, SequenceFailed, SequenceTimeout
from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops.faults import SimulatedCrash, armed, deliver
from sequence.ops.worker import build_worker
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import BadOutputSequence, Compensating, ThreeSteps

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def ledger(seq_id: int) -> list[str]:
    return list(
        Ledger.objects.filter(sequence_id=seq_id).order_by("id").values_list("step", flat=True)
    )


def test_retries_exhausted_fail_the_sequence_and_compensate_in_reverse(workers):
    workers.start()
    seq = Compensating.start({})
    with pytest.raises(SequenceFailed, match="broken step"):
        seq.wait(30)
    assert seq.status == Status.FAILED
    assert seq.error == "Broken failed: ValueError: broken step"  # names the step
    assert seq.current_step == "Broken"
    attempts = list(
        StepAttempt.objects.filter(sequence_id=seq.id).values_list("step", "attempt", "outcome")
    )
    assert attempts == [
        ("Undo", 1, "succeeded"),
        ("Broken", 1, "failed"),
        ("Broken", 2, "failed"),
        ("Undo", 1, "compensated"),
    ]
    failed = StepAttempt.objects.get(sequence_id=seq.id, step="Broken", attempt=2)
    assert "ValueError: broken step" in failed.traceback
    assert ledger(seq.id) == ["Undo", "Broken", "Broken", "Undo.compensate", "on_failure"]


def test_retry_merges_corrections_and_resumes_from_the_failed_step(workers):
    workers.start()
    seq = Compensating.start({})
    with pytest.raises(SequenceFailed):
        seq.wait(30)
    seq.retry(data={"fixed": True}, force=True)  # its compensations ran
    assert seq.status == Status.PENDING
    data = seq.wait(30)
    assert data["fixed"] is True
    assert data["trail"] == ["Undo", "C"]  # Undo is not run again
    assert ledger(seq.id).count("Undo") == 1
    assert ledger(seq.id)[-1] == "on_complete"
    # Fresh attempts: RQ's retries start over for the retried step, after a row that
    # records the person's corrections (not an attempt).
    retried = StepAttempt.objects.filter(sequence_id=seq.id, step="Broken").order_by("id")
    assert [(a.attempt, a.outcome) for a in retried] == [
        (1, "failed"), (2, "failed"), (0, "edited"), (1, "succeeded")
    ]  # fmt: skip


def test_requeueing_the_failed_rq_job_resumes_the_sequence(workers):
    workers.start()
    seq = Compensating.start({})
    with pytest.raises(SequenceFailed):
        seq.wait(30)
    record = SequenceRecord.objects.get(pk=seq.id)
    failed_job = job_id(seq.id, record.step_index, record.epoch)
    registry = FailedJobRegistry(queue=get_queue("default"))
    # RQ moves the job to its failed registry after the function raised, so after the
    # failure (and the compensations) committed.
    wait_for(lambda: failed_job in registry.get_job_ids(), timeout=10)
    Ledger.objects.create(sequence_id=seq.id, step="repair")
    registry.requeue(failed_job)  # what the django-rq dashboard and `rq requeue` do
    # The row says failed until a worker claims the requeued job.
    wait_for(lambda: SequenceRecord.objects.get(pk=seq.id).status == Status.COMPLETED)
    seq.refresh()
    assert seq.data["trail"] == ["Undo", "C"]


def test_unserializable_data_left_by_a_step_fails_the_attempt_naming_the_key(workers):
    workers.start()
    seq = BadOutputSequence.start({})
    with pytest.raises(SequenceFailed, match=r"\['when'\]"):
        seq.wait(30)
    assert seq.data == {}


def test_wait_raises_canceled_for_a_canceled_sequence():
    seq = ThreeSteps.start({})
    seq.cancel()
    with pytest.raises(SequenceCanceled):
        seq.wait(5)


def test_wait_times_out_with_a_builtin_timeout_error():
    seq = ThreeSteps.start({})
    with pytest.raises(TimeoutError, match="still pending at step 'A'"):
        seq.wait(0.2)
    with pytest.raises(SequenceTimeout):
        seq.wait(0)


def test_a_job_whose_sequence_was_deleted_ends_quietly(workers):
    seq = ThreeSteps.start({})
    SequenceRecord.objects.filter(pk=seq.id).delete()
    workers.start(burst=True)[0].wait(30)
    assert FailedJobRegistry(queue=get_queue("default")).get_job_ids() == []
    assert workers.output().count(f"Sequence {seq.id} no longer exists") == 1
    assert not Ledger.objects.exists()


def test_retry_delays_follow_the_configured_intervals():
    from sequence import Retry

    rq_retry = Retry(max=4, interval=[1, 5]).to_rq()
    assert rq_retry.intervals == [1, 5, 5, 5]
    # RQ reads intervals[len - retries_left]: the first retry waits 1 s, then 5 s.
    assert [rq_retry.intervals[len(rq_retry.intervals) - left] for left in (4, 3, 2, 1)] == [
        1,
        5,
        5,
        5,
    ]
    assert Retry(max=0).to_rq() is None


def test_the_final_failure_lands_in_rqs_failed_registry(workers):
    workers.start()
    seq = Compensating.start({})
    with pytest.raises(SequenceFailed):
        seq.wait(30)
    wait_for(lambda: FailedJobRegistry(queue=get_queue("default")).count == 1)


def _lose_connection(context: object) -> None:
    """Cut this process's database connection the way an outage or a restart would."""
    if connection.vendor == "postgresql":
        connection.ensure_connection()
        backend = connection.connection.info.backend_pid
        settings = connection.settings_dict
        with psycopg.connect(
            host=settings["HOST"], port=settings["PORT"], user=settings["USER"],
            dbname=settings["NAME"], autocommit=True,
        ) as other:  # fmt: skip
            # With a timeout, it returns once the backend is gone.
            other.execute("SELECT pg_terminate_backend(%s, 5000)", [backend])
        # As if it died just after Django's health check, which would replace it.
        connection.health_check_done = True
    else:
        raise OperationalError("disk I/O error (simulated lost connection)")


def assert_first_step_recorded_once(seq_id: int) -> None:
    """Step A of a ThreeSteps ran once, is recorded once, and B is due."""
    record = SequenceRecord.objects.get(pk=seq_id)
    assert (record.step_index, record.status) == (1, Status.PENDING)
    attempts = StepAttempt.objects.filter(sequence_id=seq_id)
    assert list(attempts.values_list("attempt", "outcome")) == [(1, "succeeded")]
    assert ledger(seq_id) == ["A"]


def test_a_connection_lost_at_the_claim_is_claimed_on_a_fresh_one(tmp_path):
    seq = ThreeSteps.start({})
    get_queue("default").empty()
    connection.ensure_connection()
    with armed("before_claim", _lose_connection, sequence=seq.id, once=str(tmp_path / "lost")):
        deliver(seq.id, 0, 0)
    assert_first_step_recorded_once(seq.id)


def test_a_claim_that_cannot_reach_the_database_does_not_spend_a_retry():
    seq = ThreeSteps.start({})
    queue = get_queue("default")
    job = queue.fetch_job(job_id(seq.id, 0, 0))
    retries = job.retries_left
    assert retries
    worker = build_worker(["default"])
    # Every try fails, the fresh connection's too: the job fails back to RQ.
    with armed("before_claim", _lose_connection, sequence=seq.id):
        worker.work(burst=True)
    job.refresh()
    assert job.retries_left == retries  # RQ's retry is given back: the step never started
    assert job.get_status() in ("scheduled", "queued")
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index, record.attempt) == (Status.PENDING, 0, 0)
    assert not StepAttempt.objects.filter(sequence_id=seq.id).exists()
    assert ledger(seq.id) == []


def test_a_claim_whose_acknowledgement_was_lost_is_taken_again_by_the_same_job():
    seq = ThreeSteps.start({})
    get_queue("default").empty()
    # The claim commits, but the job never learns it (here: it "dies" right after).
    with armed("after_claim", "raise", sequence=seq.id), pytest.raises(SimulatedCrash):
        deliver(seq.id, 0, 0, token="execution-1")
    assert SequenceRecord.objects.get(pk=seq.id).status == Status.RUNNING
    deliver(seq.id, 0, 0, token="execution-2")  # another job: the step is not its to take
    assert SequenceRecord.objects.get(pk=seq.id).status == Status.RUNNING
    deliver(seq.id, 0, 0, token="execution-1")  # the same execution, on a fresh connection
    assert_first_step_recorded_once(seq.id)


def test_a_commit_whose_acknowledgement_was_lost_carries_on_without_the_sweep():
    seq = ThreeSteps.start({})
    queue = get_queue("default")
    queue.empty()
    # The commit is durable, but the worker sees its connection fail.
    with armed("commit_ack", "error", sequence=seq.id, step=0):
        deliver(seq.id, 0, 0)
    assert_first_step_recorded_once(seq.id)
    assert queue.get_job_ids() == [job_id(seq.id, 1, 1)]  # queued now, not by a later sweep


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates a PostgreSQL backend")
def test_a_finished_step_whose_connection_died_commits_on_a_fresh_one(tmp_path):
    seq = ThreeSteps.start({})
    get_queue("default").empty()
    with armed("before_commit", _lose_connection, sequence=seq.id, once=str(tmp_path / "x")):
        deliver(seq.id, 0, 0)
    assert_first_step_recorded_once(seq.id)  # the body ran once
