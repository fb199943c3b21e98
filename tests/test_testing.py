"""drain(): users' tests run their sequences in-process, without Redis or a worker.

Every test here points RQ_QUEUES at a port nothing listens on: anything that tried to
talk to Redis would fail. The transactional test also finds the real Redis empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import TestCase, override_settings

from sequence import Fail, Retry, Sequence, Step
from sequence import testing as sequence_testing
from sequence.engine.rq.dispatch import get_queue
from sequence.models import StepAttempt
from sequence.testing import DrainLoop, drain

NO_REDIS = {
    "default": {
        "URL": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "SERIALIZER": "rq.serializers.JSONSerializer",
    },
}
TESTING = override_settings(SEQUENCE_TESTING=True, RQ_QUEUES=NO_REDIS)


class GatewayDown(Exception):
    pass


class Reserve(Step):
    def perform(self) -> None:
        self.data["reserved"] = True

    def compensate(self) -> None:
        self.sequence.data  # noqa: B018 - the handle is usable in a compensation
        Released.calls.append(self.sequence.id)


class Released:
    calls: list[int] = []


class Charge(Step):
    """Fails its first data["failures"] attempts with data["error"] (default GatewayDown)."""

    retry = Retry(max=3, interval=[60, 600, 3600], on=(GatewayDown,))

    def perform(self) -> dict[str, Any]:
        if self.data.get("declined"):
            raise Fail("card declined")
        if self.attempt <= self.data.get("failures", 0):
            self.data["poisoned"] = True  # a failed attempt's changes are not saved
            error = {"key": KeyError, "gateway": GatewayDown}[self.data.get("error", "gateway")]
            raise error(f"attempt {self.attempt}")
        return {"charged_on_attempt": self.attempt}


def ship(data: dict[str, Any]) -> None:
    data["shipped"] = True


class Order(Sequence):
    name = "drain_tests.Order"
    steps = [Reserve, Charge, ship]


class Again(Sequence):
    """Starts itself again whenever it completes: drain() must not loop forever."""

    name = "drain_tests.Again"
    steps = [ship]

    def on_complete(self) -> None:
        Again.start({})


@pytest.fixture
def no_redis() -> Iterator[None]:
    get_queue.cache_clear()  # queues built earlier point at the real Redis
    Released.calls.clear()
    with TESTING:
        yield
    get_queue.cache_clear()


def history(seq: Sequence) -> list[tuple[str, int, str]]:
    return list(
        StepAttempt.objects.filter(sequence_id=seq.id).values_list("step", "attempt", "outcome")
    )


@pytest.mark.usefixtures("no_redis")
class TestInPytestDb:
    pytestmark = pytest.mark.django_db

    def test_drain_runs_a_sequence_to_completion_through_the_runner(self) -> None:
        seq = Order.start({"item": "book"})
        assert drain() == 3
        seq.refresh()
        assert seq.status == "completed"
        assert seq.data == {
            "item": "book", "reserved": True, "charged_on_attempt": 1, "shipped": True,
        }  # fmt: skip
        assert history(seq) == [
            ("Reserve", 1, "succeeded"), ("Charge", 1, "succeeded"), ("ship", 1, "succeeded"),
        ]  # fmt: skip
        assert set(StepAttempt.objects.values_list("worker", flat=True)) == {"drain"}

    def test_drain_with_nothing_due_runs_nothing(self) -> None:
        assert drain() == 0

    def test_retries_run_at_once_and_are_counted_and_recorded(self) -> None:
        seq = Order.start({"failures": 2})
        assert drain() == 5  # Reserve, Charge three times, ship
        seq.refresh()
        assert seq.status == "completed"
        assert seq.data["charged_on_attempt"] == 3
        assert "poisoned" not in seq.data
        assert [row for row in history(seq) if row[0] == "Charge"] == [
            ("Charge", 1, "failed"), ("Charge", 2, "failed"), ("Charge", 3, "succeeded"),
        ]  # fmt: skip

    def test_exhausted_retries_fail_the_sequence_and_drain_runs_its_compensations(self) -> None:
        seq = Order.start({"failures": 10})
        assert drain() == 6  # Reserve, Charge 1 + 3 retries, Reserve's compensation
        seq.refresh()
        assert seq.status == "failed"
        assert seq.error.startswith("Charge failed: GatewayDown: attempt 4")
        assert history(seq)[-1] == ("Reserve", 1, "compensated")
        assert Released.calls == [seq.id]

    def test_an_error_retry_on_leaves_out_gets_one_attempt(self) -> None:
        seq = Order.start({"failures": 1, "error": "key"})
        assert drain() == 3
        seq.refresh()
        assert seq.status == "failed"
        assert [row for row in history(seq) if row[0] == "Charge"] == [("Charge", 1, "failed")]

    def test_fail_gets_one_attempt_and_its_message_is_the_error(self) -> None:
        seq = Order.start({"declined": True})
        assert drain() == 3
        seq.refresh()
        assert seq.status == "failed"
        assert seq.error.startswith("card declined")
        assert [row[2] for row in history(seq)] == ["succeeded", "failed", "compensated"]

    def test_fail_fast_raises_the_steps_exception_after_recording_it(self) -> None:
        seq = Order.start({"failures": 1})
        with pytest.raises(GatewayDown, match="attempt 1"):
            drain(fail_fast=True)
        seq.refresh()
        assert seq.status == "retrying"
        assert history(seq)[-1] == ("Charge", 1, "failed")
        assert drain(fail_fast=True) == 2  # the retry, then ship
        seq.refresh()
        assert seq.status == "completed"

    def test_a_sequence_that_keeps_starting_itself_stops_drain_with_a_clear_error(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sequence_testing, "MAX_ROUNDS", 5)
        Again.start({})
        with pytest.raises(DrainLoop, match=r"ran 5 rounds and sequences \[\d+\] are still due"):
            drain()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("no_redis")
def test_drain_works_in_a_transactional_test_and_queues_nothing_in_redis(redis_db: Any) -> None:
    seq = Order.start({"failures": 1})
    assert drain() == 4
    seq.refresh()
    assert seq.status == "completed"
    assert seq.data["charged_on_attempt"] == 2
    assert redis_db.dbsize() == 0  # the suite's real Redis: nothing was queued there


class DrainInTestCase(TestCase):
    def setUp(self) -> None:
        # In setUp, not on the class: the suite's own Redis fixture runs before setUp.
        self.enterContext(self.settings(SEQUENCE_TESTING=True, RQ_QUEUES=NO_REDIS))
        get_queue.cache_clear()
        self.addCleanup(get_queue.cache_clear)
        Released.calls.clear()

    def test_drain_completes_a_sequence_inside_the_tests_transaction(self) -> None:
        seq = Order(item="lamp")
        assert drain() == 3
        seq.refresh()
        assert seq.status == "completed"
        assert seq.data["shipped"] is True

    def test_a_failed_sequence_is_compensated_by_drain(self) -> None:
        seq = Order(declined=True)
        drain()
        seq.refresh()
        assert seq.status == "failed"
        assert Released.calls == [seq.id]


# -- sleeps and waits ---------------------------------------------------------------------


def test_drain_skips_sleeps_and_a_wait_needs_send(db, no_redis):
    from testproject.testapp.onboarding import Onboarding

    seq = Onboarding(user_id=1)
    drain()
    seq.refresh()
    assert seq.status == "waiting"
    seq.send("activated", {"plan": "pro"})
    drain()
    seq.refresh()
    assert seq.status == "completed"


def test_drain_can_leave_sleeps_asleep(db, no_redis):
    from testproject.testapp.onboarding import Onboarding

    seq = Onboarding(user_id=1)
    drain(skip_sleeps=False)
    seq.refresh()
    assert seq.status == "sleeping"


def test_drain_runs_a_foreach_element_by_element(db, no_redis):
    from testproject.testapp.sequences import FlakySquares, UnluckySquares

    seq = FlakySquares(numbers=[1, 2, 3, 4])
    drain()
    seq.refresh()
    assert seq.status == "completed"
    assert [r["n"] for r in seq.data["squares"]] == [1, 4, 9, 16]
    failing = UnluckySquares(numbers=[1, 13])
    drain()
    failing.refresh()
    assert failing.status == "failed"
    assert "element 1 failed: unlucky" in failing.error
