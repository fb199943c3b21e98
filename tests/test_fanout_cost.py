"""The database cost of a ForEach element, pinned: a fixed few queries, as a step's.

Counted with Django's CaptureQueriesContext, which also counts BEGIN and COMMIT. The
elements run in this process, one job at a time, against real Redis.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from sequence import ForEach, Sequence, Step
from sequence.engine.claims import Taker
from sequence.engine.rq.dispatch import ITEM, Work, enqueue_step, get_queue, job_id
from sequence.engine.transitions import elements as machine
from sequence.engine.transitions.base import Then
from sequence.models import ItemStatus, SequenceItem, SequenceRecord, StepAttempt
from sequence.runner import run_step

from .conftest import wait_for
from .test_start_many import RoundTrips

pytestmark = pytest.mark.django_db(transaction=True)

# The claim; then BEGIN, the element's row, its count on the sequence's row, its
# history row, the next element queued, COMMIT. On PostgreSQL the row, the count, the
# history row and the next element are one statement, a transaction of its own.
QUERIES_PER_ELEMENT = {"sqlite": 7, "postgresql": 2}


class Nothing(Step):
    def perform(self) -> dict[str, object]:
        # What the element sees of its sequence: the elements done before it, of all.
        return {
            "at": self.index,
            "item": self.item,
            "progress": list(self.sequence.progress.items or ()),
        }


class CostlyFan(Sequence):
    steps = [ForEach("items", Nothing, concurrency=3, into="results")]


def test_each_element_takes_the_same_few_queries_however_long_the_list():
    n = 12
    seq = CostlyFan.start({"items": [f"x{i}" for i in range(n)]})
    queue = get_queue("default")
    queue.empty()  # run the jobs by hand, one at a time
    run_step(seq.id, 0, 0)
    epoch = SequenceRecord.objects.get(pk=seq.id).epoch
    counts = []
    for index in range(n):
        with CaptureQueriesContext(connection) as queries:
            run_step(seq.id, 0, epoch, ITEM, index)
        counts.append(len(queries.captured_queries))
    # The last one also writes the results and moves the sequence on.
    assert counts[:-1] == [QUERIES_PER_ELEMENT[connection.vendor]] * (n - 1), (
        counts,
        [q["sql"][:100] for q in queries.captured_queries],
    )
    seq.refresh()
    assert seq.status == "completed"
    assert seq.data["results"] == [{"at": i, "item": f"x{i}", "progress": [i, n]} for i in range(n)]
    items = SequenceItem.objects.filter(sequence_id=seq.id)
    assert set(items.values_list("status", "attempt")) == {(ItemStatus.DONE, 1)}
    attempts = StepAttempt.objects.filter(sequence_id=seq.id, item__isnull=False)
    assert sorted(attempts.values_list("item", flat=True)) == list(range(n))


def test_a_stale_element_job_takes_one_query_and_changes_nothing():
    seq = CostlyFan.start({"items": [1, 2]})
    get_queue("default").empty()
    run_step(seq.id, 0, 0)
    epoch = SequenceRecord.objects.get(pk=seq.id).epoch
    run_step(seq.id, 0, epoch, ITEM, 0)
    before = list(SequenceItem.objects.order_by("index").values_list("status", "attempt"))
    with CaptureQueriesContext(connection) as queries:
        run_step(seq.id, 0, epoch, ITEM, 0)  # a duplicate of a job that ran
        run_step(seq.id, 0, epoch + 1, ITEM, 1)  # a job of another epoch
    assert len(queries.captured_queries) == 2, [q["sql"][:100] for q in queries.captured_queries]
    after = list(SequenceItem.objects.order_by("index").values_list("status", "attempt"))
    assert after == before


class Meddler(Step):
    """Changes everything it can reach of the data in place; returns what it saw first."""

    def perform(self) -> dict[str, object]:
        seen = {"flat": list(self.data["flat"]), "nested": dict(self.data["nested"]["deep"][0])}
        seen["note"] = self.data["note"]
        self.data["flat"].append(99)
        self.data["flat"][0] = "changed"
        self.data["nested"]["deep"][0]["n"] += 1
        self.data["nested"]["new"] = True
        self.data["note"] = "changed"
        self.item["n"] += 100  # its own element, in place
        return seen


class MeddlingFan(Sequence):
    steps = [ForEach("elements", Meddler, concurrency=1, into="seen")]


def test_elements_run_in_one_process_each_see_the_data_as_the_foreach_began(monkeypatch):
    reads = []
    snapshot = machine._Snapshot
    monkeypatch.setattr(machine, "_Snapshot", lambda *args: reads.append(1) or snapshot(*args))
    data = {
        "flat": ["a", 1, 2.5, None, True],
        "nested": {"deep": [{"n": 1}]},
        "note": "as begun",
        "elements": [{"n": 0}, {"n": 1}, {"n": 2}],
    }
    seq = MeddlingFan.start(data)
    get_queue("default").empty()
    run_step(seq.id, 0, 0)
    epoch = SequenceRecord.objects.get(pk=seq.id).epoch
    for index in range(3):  # all in this process, sharing one read of the data
        run_step(seq.id, 0, epoch, ITEM, index)
    seq.refresh()
    assert seq.status == "completed"
    first = {"flat": ["a", 1, 2.5, None, True], "nested": {"n": 1}, "note": "as begun"}
    assert seq.data["seen"] == [first] * 3
    assert {k: seq.data[k] for k in data} == data
    assert len(reads) == 1  # the data was read by the first element's claim only


class Wide(Sequence):
    steps = [ForEach("items", Nothing, concurrency=2, into="results")]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's commit queues the next element itself"
)
def test_a_commit_that_waited_for_another_still_hands_its_place_on():
    """Two elements commit at once: the second waits for the sequence row's lock, which
    the first holds until it has queued the next element. The second's statement began
    before that element was queued, yet it must queue the one after, not lose its place."""
    seq = Wide.start({"items": ["a", "b", "c", "d"]})
    get_queue("default").empty()
    run_step(seq.id, 0, 0)  # begins the ForEach: elements 0 and 1 queued
    epoch = SequenceRecord.objects.get(pk=seq.id).epoch
    first, second = (
        machine.claim_item(
            Work(sequence=seq.id, index=0, epoch=epoch, kind=ITEM, element=i),
            Taker(worker="w", token=f"t{i}", timeout=60, entered=time.monotonic()),
        )
        for i in (0, 1)
    )
    assert first is not None
    assert second is not None
    first_done, release = threading.Event(), threading.Event()
    outcomes: dict[str, object] = {}

    def commit(name: str, ic: machine.ItemClaim, hold: bool) -> None:
        try:
            with transaction.atomic():
                outcomes[name] = machine.commit_item(ic, {"at": ic.index}, 2)
                if hold:  # keep the sequence row's lock until told
                    first_done.set()
                    release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=commit, args=("first", first, True))
    holder.start()
    assert first_done.wait(30)
    waiter = threading.Thread(target=commit, args=("second", second, False))
    waiter.start()
    try:
        with connection.cursor() as cursor:  # the second commit waits for the row's lock

            def waiting() -> bool:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return cursor.fetchone()[0] == 1

            wait_for(waiting, 30, "the second commit to wait for the lock")
    finally:
        release.set()
        holder.join(30)
        waiter.join(30)
    assert outcomes == {"first": (Then.GO_ON, [2]), "second": (Then.GO_ON, [3])}
    statuses = SequenceItem.objects.filter(sequence_id=seq.id).order_by("index")
    assert list(statuses.values_list("status", flat=True)) == [
        ItemStatus.DONE, ItemStatus.DONE, ItemStatus.QUEUED, ItemStatus.QUEUED,
    ]  # fmt: skip
    assert SequenceRecord.objects.get(pk=seq.id).items_done == 2


class Broad(Sequence):
    steps = [ForEach("items", Nothing, concurrency=5)]


def test_a_foreach_queues_its_first_places_in_one_round_trip_as_single_jobs_are():
    seq = Broad.start({"items": list(range(8))})
    queue = get_queue("default")
    queue.empty()
    trips = RoundTrips()
    trips.wrap(queue.connection)
    try:
        run_step(seq.id, 0, 0)  # begins the ForEach: its first five places
    finally:
        del queue.connection.execute_command, queue.connection.pipeline
    assert trips.count == 1
    record = SequenceRecord.objects.get(pk=seq.id)
    epoch, spec = record.epoch, Broad.step_named(record.plan[0])
    assert queue.get_job_ids() == [job_id(seq.id, 0, epoch, ITEM, i) for i in range(5)]
    # Field by field in Redis, the jobs are those queued one at a time.
    enqueue_step(seq.id, 0, epoch, "default", spec, kind=ITEM, item=5)
    one, many = (queue.fetch_job(job_id(seq.id, 0, epoch, ITEM, i)) for i in (5, 0))
    assert one is not None
    assert many is not None
    assert list(many.args) == [seq.id, 0, epoch, ITEM, 0]
    stored = [queue.connection.hgetall(job.key) for job in (one, many)]
    assert stored[0].keys() == stored[1].keys()
    differ = {field for field in stored[0] if stored[0][field] != stored[1][field]}
    assert differ <= {b"created_at", b"enqueued_at", b"data", b"description"}
