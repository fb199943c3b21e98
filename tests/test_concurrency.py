"""Concurrency per key: places taken at a start, queued sequences admitted in order."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from sequence import Concurrency, ConfigurationError, InvalidData, Sequence, SequenceBusy, signals
from sequence.engine import recovery
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from sequence.testing import drain
from testproject.testapp.flow import LatestWins, OnePerAccount, RejectedWhenBusy, TwoPerAccount
from testproject.testapp.sequences import A

from .test_steering import in_threads

# Transactional: a place is given on the commit that frees it.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("testing")]


@pytest.fixture
def testing() -> Any:
    with override_settings(SEQUENCE_TESTING=True):
        yield


def statuses(*seqs: Any) -> list[str]:
    return [SequenceRecord.objects.get(pk=seq.id).status for seq in seqs]


def test_a_start_while_the_key_is_full_is_queued_and_starts_when_a_place_frees():
    first = OnePerAccount.start({"account": 7})
    second = OnePerAccount.start({"account": 7})
    other = OnePerAccount.start({"account": 8})
    assert statuses(first, second, other) == ["pending", "queued", "pending"]
    assert second.status == "queued"
    assert drain() == 6
    assert statuses(first, second, other) == ["completed"] * 3


def test_queued_ones_start_first_come_first_served_and_never_more_than_the_limit():
    seqs = [TwoPerAccount.start({"account": "a", "n": n}) for n in range(5)]
    assert statuses(*seqs) == ["pending", "pending", "queued", "queued", "queued"]
    seqs[0].cancel()
    assert statuses(*seqs) == ["canceled", "pending", "pending", "queued", "queued"]
    seqs[3].cancel()  # a queued one held no place: none frees
    assert statuses(*seqs)[4] == "queued"
    drain()
    assert statuses(*seqs) == ["canceled", "completed", "completed", "canceled", "completed"]


def test_a_paused_queued_sequence_resumed_waits_for_a_place_again():
    first = OnePerAccount.start({"account": 1})
    second = OnePerAccount.start({"account": 1})
    second.pause()
    assert statuses(second) == ["paused"]
    second.resume()
    assert statuses(first, second) == ["pending", "queued"]
    first.pause()  # a paused sequence keeps its place
    assert statuses(second) == ["queued"]
    second.pause()
    first.cancel()
    assert statuses(second) == ["paused"]
    second.resume()  # the place is free now: it starts
    assert statuses(second) == ["pending"]
    drain()
    assert statuses(second) == ["completed"]


def test_many_queued_paused_and_resumed_at_once_wait_again():
    first = OnePerAccount.start({"account": 1})
    rest = [OnePerAccount.start({"account": 1}) for _ in range(2)]
    assert OnePerAccount.records().queued().pause() == 2
    assert OnePerAccount.records().paused().resume() == 2
    assert statuses(first, *rest) == ["pending", "queued", "queued"]
    assert OnePerAccount.records().filter(status__in=["pending", "queued"]).cancel() == 3


def test_reject_raises_sequence_busy_and_saves_nothing():
    RejectedWhenBusy.start({"account": 3})
    with pytest.raises(SequenceBusy, match=r"key '3' .*limit=1"):
        RejectedWhenBusy.start({"account": 3})
    assert RejectedWhenBusy.records().count() == 1
    with pytest.raises(SequenceBusy):
        RejectedWhenBusy.start_many([{"account": 4}, {"account": 4}])
    assert RejectedWhenBusy.records().count() == 1


def test_cancel_running_cancels_the_active_ones_and_starts_the_new_one():
    canceled: list[int] = []

    def on_cancel(sender: Any, sequence: Any, **kwargs: Any) -> None:
        canceled.append(sequence.id)

    signals.sequence_canceled.connect(on_cancel)
    try:
        old = LatestWins.start({"account": 5})
        new = LatestWins.start({"account": 5})
    finally:
        signals.sequence_canceled.disconnect(on_cancel)
    assert statuses(old, new) == ["canceled", "pending"]
    assert canceled == [old.id]


def test_start_many_takes_the_places_in_order_and_queues_the_rest():
    queued: list[int] = []

    def on_queued(sender: Any, sequence: Any, **kwargs: Any) -> None:
        queued.append(sequence.id)

    signals.sequence_queued.connect(on_queued)
    try:
        seqs = TwoPerAccount.start_many([{"account": k} for k in ("x", "y", "x", "x", "y")])
    finally:
        signals.sequence_queued.disconnect(on_queued)
    assert [s.status for s in seqs] == ["pending", "pending", "pending", "queued", "pending"]
    assert statuses(*seqs) == [s.status for s in seqs]
    assert queued == [seqs[3].id]
    assert SequenceRecord.objects.get(pk=seqs[3].id).dispatch_due is None
    drain()
    assert statuses(*seqs) == ["completed"] * 5


def test_a_retried_sequence_waits_for_its_place_again():
    first = OnePerAccount.start({"account": 9})
    SequenceRecord.objects.filter(pk=first.id).update(status=Status.FAILED, error="x")
    second = OnePerAccount.start({"account": 9})
    assert statuses(second) == ["pending"]
    first.retry()
    assert statuses(first, second) == ["queued", "pending"]
    drain()
    assert statuses(first, second) == ["completed", "completed"]


def test_the_sweep_promotes_a_queued_sequence_whose_key_has_a_free_place():
    first = OnePerAccount.start({"account": 2})
    second = OnePerAccount.start({"account": 2})
    # The end committed, and its process died before it promoted the next one.
    SequenceRecord.objects.filter(pk=first.id).update(status=Status.COMPLETED)
    result = recovery.sweep()
    assert result.promoted == [second.id]
    assert statuses(second) == ["pending"]
    assert recovery.sweep().promoted == []


def test_a_start_whose_data_lacks_the_key_is_refused_and_saves_nothing():
    with pytest.raises(InvalidData, match="no key 'account'"):
        OnePerAccount.start({"acount": 1})
    with pytest.raises(InvalidData, match=r"datas\[1\]: .*no key 'account'"):
        OnePerAccount.start_many([{"account": 1}, {}])
    assert OnePerAccount.records().count() == 0


def test_a_start_under_a_concurrency_takes_the_keys_lock_counts_and_inserts():
    OnePerAccount.start({"account": 6})
    with CaptureQueriesContext(connection) as queries:
        OnePerAccount.start({"account": 6})
    brackets = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
    statements = [q["sql"] for q in queries if not q["sql"].startswith(brackets)]
    assert len(statements) == 3, statements
    assert "sequence_flow_lock" in statements[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Concurrency("k", limit=0), "limit=0"),
        (lambda: Concurrency("k", on_busy="wait"), "on_busy='wait'"),
        (lambda: Concurrency(3), "key=3"),
    ],
)
def test_a_concurrency_that_cannot_work_is_a_configuration_error(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_a_concurrency_that_is_not_one_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="concurrency = 2"):

        class Bad(Sequence):
            name = "tests.BadConcurrency"
            steps = [A]
            concurrency = 2  # type: ignore[assignment]


def test_concurrent_starts_of_one_key_admit_exactly_the_limit():
    def start(i: int) -> str:
        if i % 2:
            return TwoPerAccount.start_many([{"account": "hot"}, {"account": "hot"}])[0].status
        return TwoPerAccount.start({"account": "hot"}).status

    results = in_threads(8, start)
    assert not [r for r in results if isinstance(r, Exception)], results
    rows = TwoPerAccount.records()
    assert rows.filter(status=Status.PENDING).count() == 2
    assert rows.filter(status=Status.QUEUED).count() == 10
    assert list(rows.filter(has_place=True).values_list("status", flat=True)) == ["pending"] * 2
