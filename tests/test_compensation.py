"""Failure that rewinds: durable compensation, retry(force/from_step),
cancel(compensate=True), and Step.using (Retry policies and Fail: tests/test_retry.py)."""

from __future__ import annotations

import time

import pytest

from sequence import (
    ConfigurationError,
    InvalidData,
    InvalidTransition,
    Sequence,
    Step,
    signals,
)
from sequence.engine.states import Outcome, Status
from sequence.models import SequenceRecord
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import (
    Cancelable,
    Routing,
    Saga,
    SagaOfSubSequence,
    SagaWithFailingUndo,
    ThreeSteps,
)

from .conftest import wait_for
from .lifecycle_support import history, ledger, run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


# -- durable compensation -----------------------------------------------------------------


def test_completed_steps_are_compensated_last_first_each_once_then_the_sequence_fails():
    failed = []

    def on_failed(sender, sequence, error, **kwargs):
        failed.append((sequence.id, sequence.status, error))

    signals.sequence_failed.connect(on_failed)
    try:
        seq = Saga.start({})
        run_jobs()
    finally:
        signals.sequence_failed.disconnect(on_failed)
    seq.refresh()
    assert seq.status == Status.FAILED
    assert seq.error == "HalfDone failed: RuntimeError: half way"
    assert history(seq.id) == [
        ("First", "succeeded"),
        ("NoUndo", "succeeded"),
        ("Second", "succeeded"),
        ("HalfDone", "failed"),
        ("Second", "compensated"),
        ("First", "compensated"),
    ]
    assert [s for s in ledger(seq.id) if s.endswith(".undo") or s == "on_failure"] == [
        "Second.undo",
        "First.undo",
        "on_failure",
    ]
    assert failed == [(seq.id, Status.FAILED, "HalfDone failed: RuntimeError: half way")]


def test_compensations_and_on_failure_see_the_data_as_last_committed():
    seq = Saga.start({"order": 7})
    run_jobs()
    saw = dict(
        Ledger.objects.filter(sequence_id=seq.id, step__endswith=".saw").values_list(
            "step", "idempotency_key"
        )
    )
    # HalfDone set data["half_done"] and raised: no compensation, nor on_failure, sees it.
    assert saw == {"Second.saw": "order,trail", "First.saw": "order,trail"}
    on_failure = Ledger.objects.get(sequence_id=seq.id, step="on_failure")
    assert on_failure.idempotency_key == "order,trail"
    seq.refresh()
    assert "half_done" not in seq.data


def test_a_sequence_is_compensating_while_its_compensations_run():
    seq = Saga.start({"undo_sleep": 0.2})
    statuses = set()
    from sequence.ops.worker import build_worker

    worker = build_worker(["default"])
    for _ in range(20):
        worker.work(burst=True, max_jobs=1)
        statuses.add(SequenceRecord.objects.get(pk=seq.id).status)
        if Status.FAILED in statuses:
            break
    assert Status.COMPENSATING in statuses
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.undo_index) == (Status.FAILED, -1)


def test_a_compensation_that_fails_for_good_is_recorded_and_the_others_still_run():
    seq = SagaWithFailingUndo.start({})
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    assert history(seq.id)[-3:] == [
        ("FailingUndo", "compensation_failed"),  # attempt 1, retried
        ("FailingUndo", "compensation_failed"),  # attempt 2, for good
        ("First", "compensated"),
    ]
    assert seq.error.startswith("HalfDone failed: RuntimeError: half way")
    assert "the compensation of FailingUndo failed: RuntimeError: cannot undo" in seq.error


def test_sub_sequence_steps_compensate_like_any_other_step():
    seq = SagaOfSubSequence.start({})
    run_jobs()
    assert history(seq.id)[-2:] == [("Inner2.Second", "compensated"), ("First", "compensated")]


def test_retry_after_compensations_needs_force_and_then_runs_the_failed_step():
    seq = Saga.start({})
    run_jobs()
    seq.refresh()
    with pytest.raises(InvalidTransition, match="force=True"):
        seq.retry()
    assert SequenceRecord.objects.get(pk=seq.id).status == Status.FAILED
    seq.retry(force=True)
    assert seq.status == Status.PENDING
    assert seq.record.undo_index is None
    assert seq.current_step == "HalfDone"


def test_cancel_with_compensate_undoes_the_completed_steps_then_ends_canceled():
    canceled = []

    def on_canceled(sender, sequence, **kwargs):
        canceled.append(sequence.id)

    seq = Cancelable.start({})
    from sequence.ops.worker import build_worker

    build_worker(["default"]).work(burst=True, max_jobs=2)  # First and Second commit
    seq.refresh()
    assert seq.step_index == 2
    signals.sequence_canceled.connect(on_canceled)
    try:
        seq.cancel(compensate=True)
        assert seq.status == Status.COMPENSATING
        run_jobs()
    finally:
        signals.sequence_canceled.disconnect(on_canceled)
    seq.refresh()
    assert seq.status == Status.CANCELED
    assert history(seq.id)[-2:] == [("Second", "compensated"), ("First", "compensated")]
    assert canceled == [seq.id]


def test_cancel_without_compensate_undoes_nothing():
    seq = Cancelable.start({})
    from sequence.ops.worker import build_worker

    build_worker(["default"]).work(burst=True, max_jobs=1)
    seq.cancel()
    run_jobs()
    seq.refresh()
    assert seq.status == Status.CANCELED
    assert not [o for _, o in history(seq.id) if o == Outcome.COMPENSATED]


def test_a_removed_step_fails_the_sequence_with_step_failed_and_compensations(monkeypatch):
    seq = Saga.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    record.plan = ["First", "NoUndo", "Second", "Gone"]
    record.save(update_fields=["plan"])
    step_failed = []

    def on_step_failed(sender, sequence, step, will_retry, **kwargs):
        step_failed.append((step, will_retry))

    signals.step_failed.connect(on_step_failed)
    try:
        run_jobs()
    finally:
        signals.step_failed.disconnect(on_step_failed)
    seq.refresh()
    assert seq.status == Status.FAILED
    assert "'Gone'" in seq.error
    assert "retry(from_step=" in seq.error
    assert step_failed == [("Gone", False)]
    assert history(seq.id)[-2:] == [("Second", "compensated"), ("First", "compensated")]


# -- using and from_step --------------------------------------------------------------------


def test_using_merges_its_values_before_the_step_runs_and_one_step_can_be_used_twice():
    seq = Routing.start({})
    run_jobs()
    data = seq.wait(5)
    assert data["picked"] == ["support", "billing"]
    assert data["team"] == "x"
    assert seq.plan == [
        'Pick {"team": "support"}',
        'Pick {"team": "billing"}',
        'Inner2.Second {"team": "x"}',
    ]


def test_values_in_flight_stay_as_stored_when_a_deploy_changes_them():
    seq = Routing.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    # As if the deploy said Pick.using(team="sales"): the stored plan keeps "support".
    assert Routing.step_named(record.plan[0]).values == {"team": "support"}
    assert Routing.step_named('Pick {"team": "old"}').values == {"team": "old"}
    run_jobs()
    assert seq.wait(5)["picked"] == ["support", "billing"]


def test_using_values_must_be_json():
    with pytest.raises(ConfigurationError, match="JSON cannot hold"):

        class BadUse(Sequence):
            name = "tests.BadUse"
            steps = [Step.using(when={1, 2})]


def test_retry_from_a_step_moves_onto_the_current_plan():
    seq = Saga.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    record.plan, record.version = ["First", "Gone"], "old"
    record.save(update_fields=["plan", "version"])
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    with pytest.raises(InvalidData, match=r"has no step 'Nope'.*'First', 'NoUndo'"):
        seq.retry(from_step="Nope")
    seq.retry(from_step="Second", force=False)
    assert (seq.status, seq.current_step) == (Status.PENDING, "Second")
    assert seq.plan == Saga.plan_names()


def test_retry_from_a_step_also_takes_a_paused_sequence():
    seq = ThreeSteps.start({})
    seq.pause()
    seq.retry(from_step="C")
    assert (seq.status, seq.current_step) == (Status.PENDING, "C")
    run_jobs()
    assert seq.wait(5)["trail"] == ["C"]


def test_get_by_key_loads_the_sequence_started_with_it():
    seq = ThreeSteps.start({}, key="order-9")
    assert ThreeSteps.get(key="order-9").id == seq.id
    assert Sequence.get(key="order-9").id == seq.id
    with pytest.raises(LookupError, match="order-10"):
        ThreeSteps.get(key="order-10")


def test_waiting_on_time_is_bounded():
    start = time.monotonic()
    wait_for(lambda: True, timeout=1)
    assert time.monotonic() - start < 1
