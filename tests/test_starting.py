"""Starting a sequence: saved and queued on commit, idempotent with a key, bad data refused."""

from __future__ import annotations

import math

import pytest
from django.db import transaction

from sequence import ConfigurationError, InvalidData, SequenceError, UnknownSequence
from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from testproject.testapp.sequences import Arithmetic, ThreeSteps

from .test_start_many import RoundTrips

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids() -> list[str]:
    return get_queue("default").get_job_ids()


def test_start_saves_the_record_and_queues_the_first_step():
    seq = ThreeSteps(name="Joel", github="joelmoss")
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == Status.PENDING
    assert record.data == {"name": "Joel", "github": "joelmoss"}
    assert record.plan == ["A", "B", "C"]
    assert record.dispatch_due is None  # the enqueue confirmed the dispatch
    assert queued_ids() == [job_id(seq.id, 0, 0)]
    assert seq.status == "pending"
    assert seq.current_step == "A"
    assert (seq.progress.done, seq.progress.total) == (0, 3)


def test_a_step_job_is_queued_in_one_round_trip_to_redis():
    queue = get_queue("default")
    ThreeSteps.start({})  # RQ reads the server's version once per queue
    queue.empty()
    trips = RoundTrips()
    trips.wrap(queue.connection)
    try:
        seq = ThreeSteps.start({})
    finally:
        del queue.connection.execute_command, queue.connection.pipeline
    assert trips.count == 1
    assert queued_ids() == [job_id(seq.id, 0, 0)]


def test_first_step_is_queued_only_when_the_transaction_commits():
    with transaction.atomic():
        seq = ThreeSteps.start({"n": 1})
        assert queued_ids() == []
    assert queued_ids() == [job_id(seq.id, 0, 0)]


def test_rollback_leaves_no_record_and_no_job():
    def view() -> None:
        with transaction.atomic():
            ThreeSteps.start({"n": 1})
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        view()
    assert not SequenceRecord.objects.exists()
    assert queued_ids() == []


def test_starting_twice_with_one_key_returns_the_existing_sequence():
    first = ThreeSteps.start({"n": 1}, key="contact-42")
    second = ThreeSteps.start({"n": 2}, key="contact-42")
    assert second.id == first.id
    assert second.data == {"n": 1}
    assert SequenceRecord.objects.count() == 1
    assert len(queued_ids()) == 1


def test_one_key_may_start_different_sequences():
    first = ThreeSteps.start({}, key="k")
    other = Arithmetic.start({"n": 1}, key="k")
    assert first.id != other.id


def test_start_on_another_queue():
    seq = ThreeSteps.start({}, queue="high")
    assert get_queue("high").get_job_ids() == [job_id(seq.id, 0, 0)]
    assert queued_ids() == []


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ([1, 2], "not list"),
        ("text", "not str"),
        ({"when": __import__("datetime").datetime(2026, 1, 1)}, "['when']"),
        ({"tags": {"a", "b"}}, "['tags']"),
        ({"blob": b"\x00\x01"}, "['blob']"),
        ({"score": math.nan}, "['score']"),
        ({"score": math.inf}, "['score']"),
        ({"note": "a\x00b"}, "['note']"),
        ({"nested": {"deep": [1, {"bad": object()}]}}, "['nested']['deep'][1]['bad']"),
        ({"pair": (1, 2)}, "['pair']"),
        ({1: "int key"}, "1"),
    ],
)
def test_bad_data_fails_at_once_naming_the_key(data, names):
    with pytest.raises(InvalidData) as error:
        ThreeSteps.start(data)
    message = str(error.value)
    if not names.startswith("not "):
        assert names in message
    assert isinstance(error.value, ValueError)
    assert isinstance(error.value, SequenceError)
    assert not SequenceRecord.objects.exists()
    assert queued_ids() == []


def test_data_over_the_size_limit_is_refused_naming_its_largest_part(settings):
    settings.SEQUENCE_MAX_DATA_BYTES = 100
    with pytest.raises(InvalidData, match=r"SEQUENCE_MAX_DATA_BYTES.*data\['text'\]"):
        ThreeSteps.start({"n": 1, "text": "x" * 200})
    assert not SequenceRecord.objects.exists()


def test_data_nested_too_deep_or_containing_itself_is_refused_naming_the_path():
    deep: dict[str, object] = {}
    for _ in range(1000):
        deep = {"a": deep}
    itself: list[object] = []
    itself.append(itself)
    for data, path in ((deep, "data['a']['a']"), ({"x": itself}, "data['x'][0][0]")):
        with pytest.raises(InvalidData, match="levels deep, or contains itself") as error:
            ThreeSteps.start(data)
        assert str(error.value).startswith(path)
    assert not SequenceRecord.objects.exists()


def test_a_queue_missing_from_rq_queues_is_refused_before_anything_is_saved():
    for start in (
        lambda: ThreeSteps.start({}, queue="nope"),
        lambda: ThreeSteps.start_many([{}], queue="nope"),
    ):
        with pytest.raises(ConfigurationError, match=r"queue='nope' is not in RQ_QUEUES"):
            start()
    assert not SequenceRecord.objects.exists()


def test_unknown_sequence_name_is_refused():
    from sequence.declare.registry import get_sequence_class

    with pytest.raises(UnknownSequence, match=r"'nope\.Missing'"):
        get_sequence_class("nope.Missing")


def test_get_of_a_missing_id_raises_unknown_sequence():
    with pytest.raises(UnknownSequence):
        ThreeSteps.get(999_999)


def test_get_through_the_wrong_class_is_refused():
    seq = ThreeSteps.start({})
    with pytest.raises(UnknownSequence, match=r"testapp\.ThreeSteps"):
        Arithmetic.get(seq.id)
