"""Failing steps: retries, final failure with compensation, and resuming from the failed step."""

from __future__ import annotations

import pytest
from rq.registry import FailedJobRegistry

from sequence import SequenceCanceled, SequenceFailed, SequenceTimeout
from sequence.dispatch import get_queue, job_id
from sequence.models import SequenceRecord, StepAttempt
from sequence.states import Status
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
    assert seq.error == "ValueError: broken step"
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
    seq.retry(data={"fixed": True})
    assert seq.status == Status.PENDING
    data = seq.wait(30)
    assert data["fixed"] is True
    assert data["trail"] == ["Undo", "C"]  # Undo is not run again
    assert ledger(seq.id).count("Undo") == 1
    assert ledger(seq.id)[-1] == "on_complete"
    # Fresh attempts: RQ's retries start over for the retried step.
    retried = StepAttempt.objects.filter(sequence_id=seq.id, step="Broken").order_by("id")
    assert [a.attempt for a in retried] == [1, 2, 1]


def test_requeueing_the_failed_rq_job_resumes_the_sequence(workers):
    workers.start()
    seq = Compensating.start({})
    with pytest.raises(SequenceFailed):
        seq.wait(30)
    record = SequenceRecord.objects.get(pk=seq.id)
    failed_job = job_id(seq.id, record.step_index, record.epoch)
    registry = FailedJobRegistry(queue=get_queue("default"))
    assert failed_job in registry.get_job_ids()
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
