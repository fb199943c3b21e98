"""Retry policies and Fail: how often a failing step runs again, how long it waits, for
which errors, and a Fail that fails it at once."""

from __future__ import annotations

import pytest
from rq.registry import FailedJobRegistry

from sequence import (
    ConfigurationError,
    Fail,
    Retry,
    SequenceFailed,
)
from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.states import Status
from sequence.models import StepAttempt
from testproject.testapp.saga import PlaceOrder
from testproject.testapp.sequences import (
    BackingOff,
    OnlyTimeouts,
)

from .lifecycle_support import ledger, run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def test_fail_fails_the_step_at_once_and_leaves_its_job_in_rqs_failed_registry():
    seq = PlaceOrder.start({"order_id": 5, "card": "declined"})
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    assert seq.error == "card declined"
    charges = StepAttempt.objects.filter(sequence_id=seq.id, step="Charge")
    assert [a.outcome for a in charges] == ["failed"]  # one attempt, though Retry(max=4)
    assert ledger(seq.id) == ["reserve", "release R-5", "on_failure: card declined"]
    registry = FailedJobRegistry(queue=get_queue("default"))
    assert job_id(seq.id, 1, 0 + 1) in registry.get_job_ids()


def test_an_error_outside_retry_on_fails_the_step_at_once():
    seq = OnlyTimeouts.start({})
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    assert seq.error == "RetriesOnlyTimeouts failed: NotRetriedError: not a timeout"
    assert ledger(seq.id) == ["RetriesOnlyTimeouts"]


def test_the_saga_completes_when_the_card_is_good():
    seq = PlaceOrder.start({"order_id": 6})
    run_jobs()
    assert seq.wait(5)["charged"] is True
    assert ledger(seq.id) == ["reserve", "charge", "ship"]


def test_retries_back_off_as_the_policy_says(workers):
    workers.start()  # with RQ's scheduler: retries wait their intervals
    seq = BackingOff.start({})
    with pytest.raises(SequenceFailed):
        seq.wait(30)
    starts = list(
        StepAttempt.objects.filter(sequence_id=seq.id)
        .order_by("id")
        .values_list("started_at", flat=True)
    )
    assert len(starts) == 3
    first_wait = (starts[1] - starts[0]).total_seconds()
    second_wait = (starts[2] - starts[1]).total_seconds()
    # Retry(max=2, interval=1, backoff=3): 1 s, then 3 s (RQ's scheduler looks each second).
    assert 0.8 <= first_wait < 3
    assert 2.8 <= second_wait < 6
    assert second_wait > first_wait


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max": 2, "backoff": 0.5}, "backoff"),
        ({"max": 2, "jitter": 2}, "jitter"),
        ({"max": 2, "max_interval": -1}, "max_interval"),
        ({"max": 2, "on": ValueError()}, "on"),
        ({"max": 2, "on": ()}, "on"),
        ({"max": "3"}, "max"),
        ({"max": 1, "interval": "1"}, "interval"),
    ],
)
def test_bad_retry_policies_are_configuration_errors(options, message):
    with pytest.raises(ConfigurationError, match=message):
        Retry(**options)


def test_retry_delays_follow_backoff_capped_and_spread_by_jitter():
    assert Retry(max=5, interval=2, backoff=2.0).delays() == [2, 4, 8, 16, 32]
    assert Retry(max=5, interval=2, backoff=2.0, max_interval=10).delays() == [2, 4, 8, 10, 10]
    assert Retry(max=3, interval=[1, 5]).delays() == [1, 5, 5]
    for _ in range(50):
        spread = Retry(max=1, interval=100, jitter=0.2).delays()[0]
        assert 80 <= spread <= 120
    assert not Retry(max=2).retries(Fail("no"))
    assert not Retry(max=2, on=TimeoutError).retries(ValueError())
    assert Retry(max=2, on=(TimeoutError, ValueError)).retries(ValueError())
