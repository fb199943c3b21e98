"""INLINE_STEPS: ``sequence worker`` runs the next steps of a sequence in the same job.

Each step still goes through the whole protocol (claim, run, fenced commit with its
history row); only the round trip through Redis is skipped. Steps run on a real RQ
SimpleWorker in this process (burst mode) against real Redis, or in worker processes.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from rq.registry import FailedJobRegistry

from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops.faults import armed, sweep
from sequence.ops.worker import build_worker
from testproject.testapp.faults import FixableChain
from testproject.testapp.models import Ledger, Payment
from testproject.testapp.sequences import (
    Arithmetic,
    Compensating,
    Napping,
    QueueHopping,
    ThreeSteps,
)

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def history(seq_id: int) -> list[tuple[str, int, str]]:
    attempts = StepAttempt.objects.filter(sequence_id=seq_id).order_by("id")
    return list(attempts.values_list("step", "attempt", "outcome"))


def run_burst(*queues: str) -> tuple[int, int]:
    """Run the queues dry on a SequenceWorker; return the jobs it finished and failed."""
    worker = build_worker(list(queues or ["default"]))
    outcomes: list[bool] = []
    perform_job = worker.perform_job

    def counted(job: Any, queue: Any) -> bool:
        ok = perform_job(job, queue)
        outcomes.append(ok)
        return ok

    worker.perform_job = counted  # type: ignore[method-assign]
    worker.work(burst=True)
    return outcomes.count(True), outcomes.count(False)


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_sequence_runs_in_one_job_each_step_recorded_once():
    seqs = [Arithmetic.start({"n": n}) for n in range(3)]
    finished, failed = run_burst()
    assert (finished, failed) == (3, 0)  # one RQ job per sequence, not one per step
    for seq in seqs:
        seq.refresh()
        assert seq.status == Status.COMPLETED
        assert seq.data["seen"] == [seq.data["n"] * 2, seq.data["n"] * 2 + 1]
        assert history(seq.id) == [
            ("Double", 1, "succeeded"), ("add_one", 1, "succeeded"), ("remember", 1, "succeeded"),
        ]  # fmt: skip
        record = SequenceRecord.objects.get(pk=seq.id)
        assert (record.epoch, record.dispatch_due) == (3, None)


@override_settings(SEQUENCE_INLINE_STEPS=1)
def test_inline_steps_are_capped_per_job():
    seq = ThreeSteps.start({})
    assert run_burst() == (2, 0)  # A and B in the first job, C in a job of its own
    seq.refresh()
    assert seq.status == Status.COMPLETED
    assert [s for s, _, _ in history(seq.id)] == ["A", "B", "C"]


@override_settings(SEQUENCE_INLINE_SECONDS=0, SEQUENCE_INLINE_STEPS=10)
def test_no_step_runs_inline_once_the_time_budget_is_spent():
    seq = ThreeSteps.start({})
    assert run_burst() == (3, 0)
    seq.refresh()
    assert seq.status == Status.COMPLETED


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_step_failing_inline_gets_its_retries_as_rq_jobs_then_compensates():
    seq = Compensating.start({})
    finished, failed = run_burst()
    # Job 1 ran Undo, then Broken inline (attempt 1 failed, its retry was queued);
    # job 2 is that retry, which fails for good; job 3 is Undo's compensation.
    assert (finished, failed) == (2, 1)
    seq.refresh()
    assert seq.status == Status.FAILED
    assert history(seq.id) == [
        ("Undo", 1, "succeeded"),
        ("Broken", 1, "failed"),
        ("Broken", 2, "failed"),
        ("Undo", 1, "compensated"),
    ]
    ledger = Ledger.objects.filter(sequence_id=seq.id).order_by("id")
    assert list(ledger.values_list("step", flat=True)) == [
        "Undo", "Broken", "Broken", "Undo.compensate", "on_failure",
    ]  # fmt: skip


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_crash_between_a_commit_and_the_inline_claim_is_covered_by_the_outbox(tmp_path):
    seq = ThreeSteps.start({})
    # The job "dies" right after step A's commit (RQ records the job as failed).
    with armed("after_commit", "raise", sequence=seq.id, step=0):
        assert run_burst() == (0, 1)
    record = SequenceRecord.objects.get(pk=seq.id)
    # Step A is committed, B is due and was never queued: the outbox entry says so.
    assert (record.step_index, record.status) == (1, Status.PENDING)
    assert record.dispatch_due is not None
    assert get_queue("default").get_job_ids() == []
    result = sweep()
    assert result.redispatched == [seq.id]
    epoch = SequenceRecord.objects.get(pk=seq.id).epoch  # the sweep re-dispatches anew
    assert get_queue("default").get_job_ids() == [job_id(seq.id, 1, epoch)]
    run_burst()
    seq.refresh()
    assert seq.status == Status.COMPLETED
    assert [s for s, _, _ in history(seq.id)] == ["A", "B", "C"]


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_sequence_paused_by_its_step_stops_the_inline_run():
    seq = ThreeSteps.start({})

    def pause(context: object) -> None:
        SequenceRecord.objects.filter(pk=seq.id).update(status=Status.PAUSED)

    with armed("after_commit", pause, sequence=seq.id, step=0):
        assert run_burst() == (1, 0)
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.step_index, record.status) == (1, Status.PAUSED)
    seq.resume()
    run_burst()
    seq.refresh()
    assert seq.status == Status.COMPLETED


def test_real_workers_with_inline_steps_complete_every_sequence(workers):
    workers.start(2, env={"SEQUENCE_INLINE_STEPS": "5"})
    seqs = [Arithmetic.start({"n": n}) for n in range(20)]
    wait_for(lambda: SequenceRecord.objects.filter(status=Status.COMPLETED).count() == 20)
    assert StepAttempt.objects.filter(outcome="succeeded").count() == 60
    assert not StepAttempt.objects.exclude(outcome="succeeded").exists()
    for seq in seqs:
        seq.refresh()
        assert seq.data["plus_one"] == seq.data["n"] * 2 + 1


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_step_run_inline_gets_its_own_full_timeout():
    # Two steps of 0.6 s with a 1 s timeout each: one job, and RQ's alarm is set again
    # for the second step, which would otherwise be killed 0.4 s into it.
    seq = Napping.start({"nap": 0.6})
    assert run_burst() == (1, 0)
    seq.refresh()
    assert seq.status == Status.COMPLETED
    assert [outcome for _, _, outcome in history(seq.id)] == ["succeeded", "succeeded"]


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_step_of_another_queue_goes_through_its_queue():
    seq = QueueHopping.start({})
    assert get_queue("high").get_job_ids() == [job_id(seq.id, 0, 0)]
    assert run_burst("high") == (1, 0)  # OnHigh only: the next step is not this queue's
    assert get_queue("default").get_job_ids() == [job_id(seq.id, 1, 1)]
    assert run_burst("default") == (1, 0)  # both Hops in one job
    seq.refresh()
    assert seq.status == Status.COMPLETED
    assert seq.data["trail"] == ["OnHigh", "Hop", "Hop"]


@override_settings(SEQUENCE_INLINE_STEPS=10)
def test_a_step_without_retries_runs_in_a_job_of_its_own_so_it_can_be_requeued():
    seq = FixableChain.start({})
    # Work runs in the first job; FailsUntilFixed (Retry(max=0)) fails in its own job.
    assert run_burst() == (1, 1)
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index) == (Status.FAILED, 1)
    registry = FailedJobRegistry(queue=get_queue("default"))
    failed_job = job_id(seq.id, 1, record.epoch)
    assert failed_job in registry.get_job_ids()
    Payment.objects.create(key=f"fix:{seq.id}", seq_id=seq.id, step="fix")
    registry.requeue(failed_job)  # what the django-rq dashboard and `rq requeue` do
    run_burst()
    seq.refresh()
    assert seq.status == Status.COMPLETED
