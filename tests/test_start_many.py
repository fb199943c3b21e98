"""start_many: many sequences in a few statements and one Redis round trip, in order,
with start()'s validation, keys and on-commit rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from sequence import InvalidData, Sequence
from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.signals import sequence_started
from testproject.testapp.sequences import Arithmetic, Signup, ThreeSteps

from .conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids() -> list[str]:
    return get_queue("default").get_job_ids()


class RoundTrips:
    """Counts the round trips to Redis on the queue's own connection (not a stand-in:
    every command still reaches the real server)."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, conn: Any) -> None:
        plain, pipeline = conn.execute_command, conn.pipeline

        def execute_command(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return plain(*args, **kwargs)

        def make_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            def counted(*a: Any, **k: Any) -> Any:
                self.count += 1
                return execute(*a, **k)

            pipe.execute = counted
            return pipe

        conn.execute_command, conn.pipeline = execute_command, make_pipeline


@pytest.fixture
def round_trips() -> Iterator[RoundTrips]:
    conn = get_queue("default").connection
    counter = RoundTrips()
    counter.wrap(conn)
    yield counter
    del conn.execute_command, conn.pipeline


def test_handles_come_back_in_order_and_each_first_step_is_queued():
    seqs = ThreeSteps.start_many([{"n": i} for i in range(5)])
    assert [s.data for s in seqs] == [{"n": i} for i in range(5)]
    assert [type(s) for s in seqs] == [ThreeSteps] * 5
    assert all(s.status == Status.PENDING and s.current_step == "A" for s in seqs)
    assert sorted(queued_ids()) == sorted(job_id(s.id, 0, 0) for s in seqs)
    records = SequenceRecord.objects.filter(pk__in=[s.id for s in seqs])
    assert all(r.dispatch_due is None for r in records)  # the enqueue confirmed the outbox
    assert {r.plan == ["A", "B", "C"] and r.queue == "default" for r in records} == {True}


def test_the_jobs_are_those_start_queues():
    one = ThreeSteps.start({"n": 0})
    [many] = ThreeSteps.start_many([{"n": 1}])
    queue = get_queue("default")
    a, b = queue.fetch_job(job_id(one.id, 0, 0)), queue.fetch_job(job_id(many.id, 0, 0))
    assert a is not None
    assert b is not None
    for attribute in ("func_name", "timeout", "result_ttl", "retries_left", "retry_intervals"):
        assert getattr(a, attribute) == getattr(b, attribute)
    assert list(b.args) == [many.id, 0, 0]
    assert (a.description or "").replace(str(one.id), "") == (b.description or "").replace(
        str(many.id), ""
    )
    assert a.serializer is b.serializer
    # Field by field in Redis: only the times and what names the sequence differ.
    stored = [queue.connection.hgetall(job.key) for job in (a, b)]
    assert stored[0].keys() == stored[1].keys()
    differ = {field for field in stored[0] if stored[0][field] != stored[1][field]}
    assert differ <= {b"created_at", b"enqueued_at", b"data", b"description"}


def test_the_rows_are_those_start_saves():
    ada = User.objects.create(username="ada")
    data = {"n": 0, "name": "Zoë", "tags": ["a", "b"], "nested": {"x": None, "y": 1.5}}
    one = ThreeSteps.start(data, key="one", subject=ada)
    many = ThreeSteps.start_many([data, {}], keys=["many", None], subjects=[ada, None])
    rows = SequenceRecord.objects.order_by("id").values()
    a, b, c = (rows.get(pk=pk) for pk in (one.id, many[0].id, many[1].id))
    # Each call is a trace of its own when a tracer provider records (tests/test_traces.py).
    assert {field for field in a if a[field] != b[field]} - {"traceparent"} == {
        "id", "key", "created_at", "updated_at",
    }  # fmt: skip
    assert b["data"] == data
    assert (c["key"], c["data"], c["subject_type_id"], c["subject_id"]) == (None, {}, None, "")
    assert many[0].id < many[1].id
    # The handles hold what the rows hold.
    for handle, row in zip(many, (b, c), strict=True):
        record = handle.record
        assert {f: getattr(record, f) for f in row if f != "dispatch_due"} == {
            f: v for f, v in row.items() if f != "dispatch_due"
        }


def test_two_thousand_sequences_take_at_most_two_round_trips_to_redis(round_trips):
    seqs = ThreeSteps.start_many([{"n": i} for i in range(2000)])
    assert 1 <= round_trips.count <= 2
    assert get_queue("default").count == 2000
    assert len({s.id for s in seqs}) == 2000


def test_started_is_sent_per_sequence_after_the_commit():
    seen: list[int] = []

    def receiver(sender: type[Sequence], sequence: Sequence, **kwargs: Any) -> None:
        seen.append(sequence.id)

    sequence_started.connect(receiver)
    try:
        with transaction.atomic():
            seqs = ThreeSteps.start_many([{}, {}, {}])
            assert seen == []
            assert queued_ids() == []
        assert seen == [s.id for s in seqs]
        assert len(queued_ids()) == 3
    finally:
        sequence_started.disconnect(receiver)


@pytest.mark.parametrize(
    ("datas", "keys", "names"),
    [
        ([{}, {"when": object()}], None, "datas[1]: data['when'] is object"),
        ([{}, {}, {"score": float("nan")}], ["a", None, "c"], "datas[2] (key 'c'): data['score']"),
        ([{}, [1, 2]], ["a", "b"], "datas[1] (key 'b'): data must be a dict"),
        ([{}, {}], ["a", 7], "datas[1] (key 7): a key is a string"),
        ([{}, {}], ["a"], "keys must be a list parallel to datas (2 entries"),
    ],
)
def test_a_bad_element_saves_and_queues_nothing_and_names_its_position_and_key(datas, keys, names):
    with pytest.raises(InvalidData) as error:
        ThreeSteps.start_many(datas, keys=keys)
    assert names in str(error.value)
    assert not SequenceRecord.objects.exists()
    assert queued_ids() == []


def test_the_schema_cleans_each_element_and_its_refusal_names_the_element():
    [seq] = Signup.start_many([{"email": "ADA@EXAMPLE.COM"}])
    assert seq.data == {"email": "ada@example.com"}
    with pytest.raises(InvalidData, match=r"datas\[1\]: .*schema rejected.*not an address"):
        Signup.start_many([{"email": "a@b.c"}, {"email": "nowhere"}])
    assert SequenceRecord.objects.count() == 1


def test_data_over_the_size_limit_is_refused_naming_the_element(settings):
    settings.SEQUENCE_MAX_DATA_BYTES = 100
    with pytest.raises(InvalidData, match=r"datas\[1\]: .*SEQUENCE_MAX_DATA_BYTES"):
        ThreeSteps.start_many([{}, {"text": "x" * 200}])
    assert not SequenceRecord.objects.exists()


def test_a_key_started_before_returns_the_existing_sequence_and_is_not_queued_again():
    before = ThreeSteps.start({"n": "first"}, key="k-1")
    seqs = ThreeSteps.start_many([{"n": 0}, {"n": 1}, {"n": 2}], keys=[None, "k-1", "k-2"])
    assert seqs[1].id == before.id
    assert seqs[1].data == {"n": "first"}
    assert seqs[2].data == {"n": 2}
    assert SequenceRecord.objects.count() == 3
    assert sorted(queued_ids()) == sorted(job_id(s.id, 0, 0) for s in (seqs[0], before, seqs[2]))


def test_one_key_twice_in_one_call_starts_one_sequence():
    seqs = ThreeSteps.start_many([{"n": 0}, {"n": 1}, {"n": 2}], keys=["dup", "other", "dup"])
    assert seqs[0].id == seqs[2].id
    assert seqs[2].data == {"n": 0}
    assert SequenceRecord.objects.count() == 2
    assert len(queued_ids()) == 2


def test_keys_belong_to_one_sequence_name():
    other = Arithmetic.start({"n": 1}, key="shared")
    [seq] = ThreeSteps.start_many([{}], keys=["shared"])
    assert seq.id != other.id


def test_start_many_on_another_queue():
    seqs = ThreeSteps.start_many([{}, {}], queue="high")
    assert sorted(get_queue("high").get_job_ids()) == sorted(job_id(s.id, 0, 0) for s in seqs)
    assert queued_ids() == []


def test_nothing_to_start_returns_an_empty_list():
    assert ThreeSteps.start_many([]) == []
    assert queued_ids() == []


def test_subjects_link_each_sequence_to_its_object():
    ada, bob = User.objects.create(username="ada"), User.objects.create(username="bob")
    handles = ThreeSteps.start_many([{}, {}, {}], subjects=[ada, None, bob])
    assert [h.id for h in ThreeSteps.for_subject(ada)] == [handles[0].id]
    assert [h.id for h in ThreeSteps.for_subject(bob)] == [handles[2].id]
    with pytest.raises(InvalidData):
        ThreeSteps.start_many([{}], subjects=[User(username="unsaved")])


def test_a_rolled_back_transaction_leaves_no_record_and_the_worker_runs_nothing(workers):
    workers.start(1)

    def view() -> None:
        with transaction.atomic():
            ThreeSteps.start_many([{"n": i} for i in range(50)])
            raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        view()
    assert not SequenceRecord.objects.exists()
    assert queued_ids() == []
    # The worker is live: a sequence started afterwards completes, and it is the only one.
    after = ThreeSteps.start({"n": "after"})
    assert after.wait(timeout=30)["n"] == "after"
    assert SequenceRecord.objects.count() == 1
    assert set(StepAttempt.objects.values_list("sequence_id", flat=True)) == {after.id}


def test_a_real_worker_completes_every_sequence(workers):
    workers.start(1)
    seqs = Arithmetic.start_many([{"n": i} for i in range(30)])
    wait_for(
        lambda: SequenceRecord.objects.filter(status=Status.COMPLETED).count() == 30,
        timeout=60,
        message="30 sequences completed",
    )
    for index, seq in enumerate(seqs):
        seq.refresh()
        assert seq.data == {"n": index, "doubled": 2 * index, "plus_one": 2 * index + 1,
                            "seen": [2 * index, 2 * index + 1]}  # fmt: skip
