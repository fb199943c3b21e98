"""Fan-out: ForEach runs one unit of work per element of a list."""

from __future__ import annotations

import pytest

from sequence import ConfigurationError, ForEach, Sequence, SequenceFailed, Step
from sequence.engine.states import Status
from sequence.models import ItemStatus, SequenceItem, SequenceRecord, StepAttempt
from testproject.testapp.campaign import Campaign
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import (
    Doubles,
    FlakySquares,
    Square,
    Squares,
    SquaresAtOnce,
    UnluckySquares,
)

from .conftest import wait_for
from .lifecycle_support import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def runs(seq_id: int, prefix: str = "square") -> list[str]:
    return list(
        Ledger.objects.filter(sequence_id=seq_id, step__startswith=prefix)
        .order_by("id")
        .values_list("step", flat=True)
    )


def test_each_element_runs_once_in_list_order_and_results_are_stored_in_order():
    seq = Squares.start({"numbers": [3, 1, 2]})
    run_jobs()
    data = seq.wait(5)
    assert data["squares"] == [{"n": 9}, {"n": 1}, {"n": 4}]
    assert runs(seq.id) == ["square 0", "square 1", "square 2"]
    assert "leaked" not in data  # an element's changes to the data are not saved
    assert data["trail"] == ["A", "B"]
    items = StepAttempt.objects.filter(sequence_id=seq.id, item__isnull=False)
    assert sorted(items.values_list("item", flat=True)) == [0, 1, 2]
    assert seq.record.items_total is None  # over


def test_an_empty_list_moves_on_at_once():
    seq = Squares.start({"numbers": []})
    run_jobs()
    assert seq.wait(5)["squares"] == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "the data has no key 'numbers'"),
        ({"numbers": "1,2,3"}, r"data\['numbers'\] is str, not a list"),
    ],
)
def test_a_missing_key_or_a_value_that_is_not_a_list_fails_naming_the_key(data, message):
    seq = Squares.start(data)
    run_jobs()
    with pytest.raises(SequenceFailed, match=message):
        seq.wait(5)


def test_a_list_longer_than_the_limit_is_refused(settings):
    settings.SEQUENCE_MAX_ITEMS = 3
    seq = Squares.start({"numbers": [1, 2, 3, 4]})
    run_jobs()
    with pytest.raises(SequenceFailed, match="over SEQUENCE_MAX_ITEMS"):
        seq.wait(5)


def test_each_element_has_its_own_idempotency_key():
    seq = Squares.start({"numbers": [5, 6]})
    run_jobs()
    seq.wait(5)
    keys = list(
        Ledger.objects.filter(sequence_id=seq.id, step__startswith="square").values_list(
            "idempotency_key", flat=True
        )
    )
    assert keys == [f"{seq.id}:1:Square[0]", f"{seq.id}:1:Square[1]"]


def test_a_failing_element_is_retried_alone():
    seq = FlakySquares.start({"numbers": [1, 2, 3, 4]})
    run_jobs()
    data = seq.wait(5)
    assert [r["n"] for r in data["squares"]] == [1, 4, 9, 16]
    assert runs(seq.id).count("square 2") == 1  # element 3 failed once, before recording
    outcomes = StepAttempt.objects.filter(sequence_id=seq.id, item=2).values_list(
        "attempt", "outcome"
    )
    assert list(outcomes) == [(1, "failed"), (2, "succeeded")]


def test_an_element_failing_for_good_fails_the_sequence_and_compensates_what_completed():
    seq = UnluckySquares.start({"numbers": [1, 2, 13, 4]})
    run_jobs()
    with pytest.raises(SequenceFailed, match="element 2 failed: unlucky"):
        seq.wait(5)
    # concurrency 1: element 3 never started; 1 and 0 are compensated, then First.
    assert runs(seq.id) == ["square 0", "square 1"]
    assert runs(seq.id, "unsquare") == ["unsquare 1", "unsquare 0"]
    history = list(
        StepAttempt.objects.filter(sequence_id=seq.id, outcome="compensated")
        .order_by("id")
        .values_list("step", "item")
    )
    assert history[-1] == ("First", None)
    assert [item for _, item in history[:-1]] == [1, 0]
    statuses = dict(SequenceItem.objects.filter(sequence_id=seq.id).values_list("index", "status"))
    assert statuses == {
        0: ItemStatus.UNDONE,
        1: ItemStatus.UNDONE,
        2: ItemStatus.FAILED,
        3: ItemStatus.PENDING,
    }


def test_retrying_a_failed_foreach_runs_only_the_elements_that_did_not_succeed():
    seq = UnluckySquares.start({"numbers": [1, 13, 3]})
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    seq.retry(data={"numbers": [1, 2, 3]}, force=True)
    run_jobs()
    assert [r["n"] for r in seq.wait(5)["squares"]] == [1, 4, 9]
    # Element 0 ran, was compensated, and ran again (forced); 1 and 2 ran once.
    assert runs(seq.id).count("square 1") == 1
    assert runs(seq.id).count("square 2") == 1


def test_a_function_takes_the_item_and_the_data():
    seq = Doubles.start({"numbers": [1, 2, 3, 4, 5]})
    run_jobs()
    assert seq.wait(5)["doubled"] == [2, 4, 6, 8, 10]


def test_progress_shows_the_elements_of_a_running_foreach():
    seq = Squares.start({"numbers": [1, 2, 3]})
    from sequence.ops.worker import build_worker

    worker = build_worker(["default"])
    worker.work(burst=True, max_jobs=3)  # A, the ForEach's start, element 0
    seq.refresh()
    assert seq.status == Status.RUNNING
    assert seq.progress.items == (1, 3)
    assert str(seq.progress) == "1/3 (1/3 elements)"
    run_jobs()
    seq.wait(5)
    assert seq.progress.items is None


def test_pause_stops_new_elements_and_resume_carries_on():
    seq = Squares.start({"numbers": [1, 2, 3, 4]})
    from sequence.ops.worker import build_worker

    build_worker(["default"]).work(burst=True, max_jobs=3)  # A, start, element 0
    seq.pause()
    run_jobs()  # element 1 was queued: it does not start while paused
    seq.refresh()
    assert seq.status == Status.PAUSED
    assert runs(seq.id) == ["square 0"]
    seq.resume()
    assert seq.status == Status.RUNNING
    run_jobs()
    assert [r["n"] for r in seq.wait(5)["squares"]] == [1, 4, 9, 16]


def test_cancel_stops_new_elements():
    seq = Squares.start({"numbers": [1, 2, 3]})
    from sequence.ops.worker import build_worker

    build_worker(["default"]).work(burst=True, max_jobs=3)
    seq.cancel()
    run_jobs()
    seq.refresh()
    assert seq.status == Status.CANCELED
    assert runs(seq.id) == ["square 0"]


@pytest.mark.parametrize("stop", ["pause", "cancel"])
def test_the_sweep_leaves_the_queued_elements_of_a_stopped_foreach_alone(stop):
    from sequence.engine.recovery import sweep
    from sequence.engine.rq.dispatch import get_queue
    from sequence.ops.worker import build_worker

    seq = Squares.start({"numbers": [1, 2, 3]})
    build_worker(["default"]).work(burst=True, max_jobs=3)  # A, start, element 0
    getattr(seq, stop)()
    run_jobs()  # element 1's job finds the sequence stopped and ends
    queued = SequenceItem.objects.filter(sequence_id=seq.id, status=ItemStatus.QUEUED)
    assert queued.count() == 1
    result = sweep(grace=0)  # its dispatch time is past the grace, and RQ holds no job
    assert seq.id not in result.redispatched
    assert get_queue("default").count == 0
    assert queued.get().recoveries == 0
    if stop == "pause":
        seq.resume()  # queues it again
        run_jobs()
        assert [r["n"] for r in seq.wait(5)["squares"]] == [1, 4, 9]


def test_at_most_concurrency_elements_run_at_once(workers):
    workers.start(3)
    seq = SquaresAtOnce.start({"numbers": list(range(12)), "slow": 0.3})
    data = seq.wait(60)
    assert [r["n"] for r in data["squares"]] == [i * i for i in range(12)]
    spans = list(
        StepAttempt.objects.filter(sequence_id=seq.id, item__isnull=False).values_list(
            "started_at", "finished_at"
        )
    )
    most = max(sum(1 for s, f in spans if s <= moment < f) for moment, _ in spans)
    assert 2 <= most <= 4


def test_the_campaign_of_the_docs(workers):
    workers.start(2)
    seq = Campaign.start({"audience": 30})
    data = seq.wait(60)
    assert data["sent"] == 30
    assert len(runs(seq.id, "mail")) == 30


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ForEach("", Square), "data key"),
        (lambda: ForEach("ids", "Square"), "Step subclass"),
        (lambda: ForEach("ids", Square, concurrency=0), "concurrency"),
        (lambda: ForEach("ids", Square, into=""), "into"),
    ],
)
def test_bad_foreach_arguments_are_configuration_errors(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_a_sequence_as_a_foreach_element_is_refused_when_the_class_is_defined():
    with pytest.raises(ConfigurationError, match=r"Squares is neither .*start_many"):
        type("Nested", (Sequence,), {"steps": [ForEach("groups", Squares)]})


def test_the_stored_plan_names_the_foreach_with_its_parameters():
    seq = Squares.start({"numbers": [1]})
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.plan[1] == (
        'ForEach {"concurrency": 1, "into": "squares", "key": "numbers", "step": "Square"}'
    )
    spec = Squares.step_named(record.plan[1])
    assert spec is not None
    assert spec.each is not None
    assert spec.cls is Square
    assert issubclass(spec.cls, Step)
    wait_for(lambda: True)
