"""At-least-once delivery: duplicates, stale epochs and foreign jobs change nothing."""

from __future__ import annotations

import pytest
from rq.registry import FailedJobRegistry

from sequence.engine.rq.dispatch import enqueue_step, get_queue
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import AtomicSequence, ThreeSteps

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def steps_run(seq_id: int) -> list[str]:
    return list(
        Ledger.objects.filter(sequence_id=seq_id).order_by("id").values_list("step", flat=True)
    )


def test_a_step_job_delivered_three_times_runs_its_body_once(workers):
    seq = ThreeSteps.start({})
    for _ in range(2):
        enqueue_step(seq.id, 0, 0, "default", ThreeSteps.step_specs[0])
    workers.start(2)
    assert seq.wait(30)["trail"] == ["A", "B", "C"]
    assert steps_run(seq.id) == ["A", "B", "C"]
    assert StepAttempt.objects.filter(sequence_id=seq.id).count() == 3


def test_a_completed_step_delivered_again_does_not_run_or_move_the_sequence(workers):
    workers.start()
    seq = ThreeSteps.start({})
    seq.wait(30)
    before = SequenceRecord.objects.get(pk=seq.id)
    for index in range(3):  # the old job ids, re-enqueued
        enqueue_step(seq.id, index, index, "default", ThreeSteps.step_specs[index])
    wait_for(lambda: get_queue("default").count == 0)
    workers.start(burst=True)[0].wait(30)
    after = SequenceRecord.objects.get(pk=seq.id)
    assert (after.epoch, after.step_index, after.status) == (
        before.epoch,
        before.step_index,
        "completed",
    )
    assert steps_run(seq.id) == ["A", "B", "C"]
    assert FailedJobRegistry(queue=get_queue("default")).count == 0


def test_a_job_for_a_stale_or_future_epoch_is_ignored(workers):
    seq = ThreeSteps.start({})
    enqueue_step(seq.id, 0, 7, "default", None)  # forged: no such epoch was committed
    enqueue_step(seq.id, 2, 0, "default", None)  # wrong step for the epoch
    get_queue("default").remove(f"seq-{seq.id}-0-0")  # only the forged jobs remain
    workers.start(burst=True)[0].wait(30)
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index, record.epoch) == ("pending", 0, 0)
    assert steps_run(seq.id) == []


def test_an_atomic_step_takes_effect_exactly_once(workers):
    seq = AtomicSequence.start({})
    enqueue_step(seq.id, 0, 0, "default", AtomicSequence.step_specs[0])
    workers.start(2)
    seq.wait(30)
    assert steps_run(seq.id).count("AtomicWrite") == 1


def test_a_foreign_job_is_refused_before_its_function_is_imported(workers, tmp_path):
    tripwire = tmp_path / "tripwire"
    queue = get_queue("default")
    job = queue.enqueue_call("testproject.testapp.tripwire.boom", job_id="foreign")
    workers.start(burst=True, env={"TRIPWIRE": str(tripwire)})[0].wait(30)
    assert not tripwire.exists()
    job.refresh()
    assert job.is_failed
    assert "ForeignJob" in (job.latest_result().exc_string or "")


def test_a_pickled_job_is_not_run(workers, tmp_path):
    from rq import Queue

    tripwire = tmp_path / "tripwire"
    pickled = Queue("default", connection=get_queue("default").connection)  # pickle serializer
    pickled.enqueue_call("testproject.testapp.tripwire.boom", job_id="pickled")
    workers.start(burst=True, env={"TRIPWIRE": str(tripwire)})[0].wait(30)
    assert not tripwire.exists()
