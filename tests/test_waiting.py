"""Waiting: durable Sleep, WaitFor and send, and what goes around them."""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.utils import timezone

from sequence import (
    ConfigurationError,
    InvalidData,
    InvalidTransition,
    Sequence,
    SequenceFailed,
    Sleep,
    WaitFor,
    signals,
)
from sequence.engine.states import Status
from sequence.engine.waiting import wake_due
from sequence.models import SequenceEvent, SequenceRecord, StepAttempt
from testproject.testapp.models import Ledger
from testproject.testapp.onboarding import Onboarding
from testproject.testapp.sequences import (
    Approval,
    ApprovalOrOnward,
    ApprovalOrUndo,
    SleepsLast,
    Snooze,
    SnoozeUntil,
    ThreeSteps,
)

from .conftest import wait_for
from .lifecycle_support import queued_jobs, run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def status(seq) -> str:
    seq.refresh()
    return seq.status


def wake_when_due(seq, timeout: float = 10) -> None:
    """Run wake passes (as a worker's maintenance thread does) until the sequence wakes."""
    wait_for(lambda: wake_due(pk=seq.id), timeout=timeout, message="a wake-up")


# -- Sleep --------------------------------------------------------------------------------


def test_a_sleep_stores_its_wake_up_time_and_the_sequence_goes_on_after_it():
    seq = Snooze.start({})
    before = timezone.now()
    run_jobs()
    assert status(seq) == Status.SLEEPING
    assert seq.record.wake_at is not None
    assert timedelta(seconds=0.5) < seq.record.wake_at - before < timedelta(seconds=3)
    # The sleep is a plan item, where the sequence is until it wakes: not done yet.
    assert str(seq.progress) == "1/3"
    assert seq.current_step == 'Sleep {"seconds": 1.0}'
    out = io.StringIO()
    call_command("sequence", "show", str(seq.id), stdout=out)
    plan = [
        line.split()
        for line in out.getvalue().splitlines()
        if line.strip().startswith(("1.", "2.", "3.", ">"))
    ]
    assert plan == [
        ["1.", "A", "done"], [">", "2.", "Sleep", '{"seconds":', "1.0}", "<-", "sleeping"], ["3.", "B"],
    ]  # fmt: skip
    wake_when_due(seq)
    assert status(seq) == Status.PENDING
    run_jobs()
    assert seq.wait(5)["trail"] == ["A", "B"]
    assert [s for (s,) in StepAttempt.objects.filter(sequence_id=seq.id).values_list("step")] == [
        "A",
        'Sleep {"seconds": 1.0}',
        "B",
    ]


def test_real_workers_wake_a_sleeper_on_time(workers):
    workers.start()
    seq = Snooze.start({})
    wait_for(lambda: status(seq) == Status.SLEEPING, timeout=20)
    wake_at = seq.record.wake_at
    data = seq.wait(20)
    assert data["trail"] == ["A", "B"]
    b = StepAttempt.objects.get(sequence_id=seq.id, step="B")
    lateness = (b.started_at - wake_at).total_seconds()
    assert 0 <= lateness < 2.5


def test_woken_sleepers_go_to_the_head_of_the_queue_the_first_due_first():
    first, second = Snooze.start({}), Snooze.start({})
    run_jobs()  # both asleep, the first one due first
    assert status(first) == status(second) == Status.SLEEPING
    later = SequenceRecord.objects.get(pk=first.id).wake_at + timedelta(milliseconds=10)
    SequenceRecord.objects.filter(pk=second.id).update(wake_at=later)
    queued_since = Snooze.start({})  # its first step waits in the queue
    wait_for(lambda: timezone.now() > later, timeout=10, message="both wake-up times")
    assert wake_due() == 2  # one pass: the first due at the very head
    head = [job_id.split("-")[1] for job_id in queued_jobs()]
    assert head == [str(first.id), str(second.id), str(queued_since.id)]


def test_a_sleep_until_a_time_from_the_data():
    at = timezone.now() + timedelta(seconds=1)
    seq = SnoozeUntil.start({"wake_at": at.isoformat()})
    run_jobs()
    assert status(seq) == Status.SLEEPING
    assert abs((seq.record.wake_at - at).total_seconds()) < 0.01
    wake_when_due(seq)
    run_jobs()
    assert seq.wait(5)["trail"] == ["A", "B"]


def test_a_sleep_until_that_gives_no_aware_time_fails_naming_the_item():
    seq = SnoozeUntil.start({"wake_at": "2030-01-01T10:00:00"})  # no offset
    run_jobs()
    with pytest.raises(SequenceFailed, match=r"Sleep \{\"until\".*aware datetime") as error:
        seq.wait(5)
    # It names what the callable returned, not what it was read as.
    assert "returned '2030-01-01T10:00:00', which has no time zone" in str(error.value)


def test_a_sleep_as_the_last_item_completes_the_sequence_when_it_wakes():
    completed = []

    def on_completed(sender, sequence, **kwargs):
        completed.append(sequence.id)

    signals.sequence_completed.connect(on_completed)
    try:
        seq = SleepsLast.start({})
        run_jobs()
        assert status(seq) == Status.SLEEPING
        wake_when_due(seq)
    finally:
        signals.sequence_completed.disconnect(on_completed)
    assert status(seq) == Status.COMPLETED
    assert completed == [seq.id]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Sleep(seconds=-1), "seconds"),
        (lambda: Sleep(days="3"), "days"),
        (lambda: Sleep(until="tomorrow"), "callable"),
        (lambda: Sleep(seconds=1, until=lambda d: d), "not both"),
        (lambda: WaitFor(""), "event"),
        (lambda: WaitFor("x", timeout=-5), "timeout"),
        (lambda: WaitFor("x", on_timeout="retry"), "on_timeout"),
    ],
)
def test_bad_sleeps_and_waits_are_configuration_errors(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_pause_while_sleeping_then_resume_after_the_wake_up_time_goes_on_at_once():
    seq = Snooze.start({})
    run_jobs()
    seq.pause()
    assert seq.status == Status.PAUSED
    wait_for(lambda: SequenceRecord.objects.get(pk=seq.id).wake_at <= timezone.now())
    assert wake_due(pk=seq.id) == 0  # paused: not woken
    seq.resume()
    assert seq.status == Status.PENDING
    run_jobs()
    assert seq.wait(5)["trail"] == ["A", "B"]


def test_pause_and_resume_before_the_wake_up_time_sleeps_on():
    seq = Onboarding.start({})
    run_jobs()
    assert wake_due(pk=seq.id) == 0  # three days to go
    seq.pause()
    seq.resume()
    assert seq.status == Status.SLEEPING
    assert seq.record.wake_at > timezone.now() + timedelta(days=2)


def test_cancel_while_sleeping():
    seq = Snooze.start({})
    run_jobs()
    seq.cancel()
    assert seq.status == Status.CANCELED
    assert seq.record.wake_at is None
    wait_for(lambda: timezone.now() > seq.record.created_at + timedelta(seconds=1.5))
    assert wake_due() == 0


def test_wake_now_from_the_admin(admin_client):
    seq = Onboarding.start({})
    run_jobs()
    assert status(seq) == Status.SLEEPING
    response = admin_client.get(f"/admin/sequence/sequencerecord/{seq.id}/change/")
    assert "sleeping until" in response.content.decode()
    admin_client.post(f"/admin/sequence/sequencerecord/{seq.id}/do/wake/")
    assert status(seq) == Status.PENDING
    run_jobs()
    assert status(seq) == Status.WAITING


# -- WaitFor and send ---------------------------------------------------------------------


def test_a_wait_ends_with_its_event_whose_data_is_merged():
    received = []

    def on_event(sender, sequence, event, data, event_id, **kwargs):
        received.append((event, data, event_id))

    seq = Approval.start({})
    run_jobs()
    assert status(seq) == Status.WAITING
    assert seq.record.waiting_for == "approved"
    signals.event_received.connect(on_event)
    try:
        seq.send("approved", {"by": "ada"}, id="evt-1")
    finally:
        signals.event_received.disconnect(on_event)
    assert seq.status == Status.PENDING
    assert received == [("approved", {"by": "ada"}, "evt-1")]
    run_jobs()
    data = seq.wait(5)
    assert data["by"] == "ada"
    assert data["trail"] == ["A", "B"]
    event = SequenceEvent.objects.get(sequence_id=seq.id)
    assert (event.consumed_by, event.consumed_at is not None) == (1, True)


def test_an_event_sent_before_the_wait_is_kept_and_consumed_when_it_gets_there():
    seq = Approval.start({})
    seq.send("approved", {"early": True})
    assert status(seq) == Status.PENDING
    run_jobs()
    assert seq.wait(5)["early"] is True


def test_a_waiting_sequence_is_at_its_wait_until_the_event_comes_even_paused():
    seq = Approval.start({})
    run_jobs()
    seq.refresh()
    at_wait = ("1/3", 'WaitFor {"event": "approved", "on_timeout": "fail", "timeout": null}')
    assert (str(seq.progress), seq.current_step) == at_wait
    seq.pause()
    assert (str(seq.progress), seq.current_step) == at_wait
    seq.resume()
    seq.send("approved")
    seq.refresh()
    assert (str(seq.progress), seq.current_step) == ("2/3", "B")


def test_a_wait_a_deploy_removed_still_takes_its_event():
    seq = ThreeSteps.start({})  # as if its class had [A, WaitFor("go"), B] when it began
    wait = 'WaitFor {"event": "go", "on_timeout": "fail", "timeout": null}'
    SequenceRecord.objects.filter(pk=seq.id).update(
        plan=["A", wait, "B"], step_index=2, status=Status.WAITING, waiting_for="go",
        dispatch_due=None,
    )  # fmt: skip
    seq.send("go", {"went": True})
    run_jobs()
    data = seq.wait(5)
    assert data["went"] is True
    assert data["trail"] == ["B"]


def test_a_second_delivery_of_one_event_id_is_accepted_and_ignored():
    seq = Approval.start({})
    run_jobs()
    first = seq.send("approved", {"n": 1}, id="delivery-9")
    second = seq.send("approved", {"n": 2}, id="delivery-9")
    assert first is None
    assert second is None
    assert SequenceEvent.objects.filter(sequence_id=seq.id).count() == 1
    run_jobs()
    assert seq.wait(5)["n"] == 1
    # Delivered again once the first delivery finished the sequence: still ignored.
    assert seq.send("approved", {"n": 3}, id="delivery-9") is None
    assert SequenceEvent.objects.filter(sequence_id=seq.id).count() == 1
    out = io.StringIO()
    call_command("sequence", "send", str(seq.id), "approved", "--id", "delivery-9", stdout=out)
    with pytest.raises(InvalidTransition, match="completed"):
        seq.send("approved", id="delivery-10")  # a new event is refused


def test_send_refuses_finished_sequences_unknown_events_and_bad_data():
    seq = Approval.start({})
    with pytest.raises(InvalidData, match="does not wait for 'aproved'"):
        seq.send("aproved")
    with pytest.raises(InvalidData, match=r"\['when'\]"):
        seq.send("approved", {"when": timezone.now()})
    with pytest.raises(InvalidData, match="must be a dict"):
        seq.send("approved", ["not", "a", "dict"])
    assert not SequenceEvent.objects.filter(sequence_id=seq.id).exists()
    seq.cancel()
    with pytest.raises(InvalidTransition, match="canceled"):
        seq.send("approved")


def test_racing_senders_consume_each_event_once():
    seq = Approval.start({})
    run_jobs()
    barrier = threading.Barrier(6)
    errors = []

    def sender(n: int) -> None:
        try:
            barrier.wait()
            Sequence.get(seq.id).send("approved", {"sender": n}, id=f"same-{n % 2}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    events = SequenceEvent.objects.filter(sequence_id=seq.id)
    assert events.count() == 2  # two ids, each stored once
    assert events.filter(consumed_at__isnull=False).count() == 1
    assert status(seq) == Status.PENDING


def test_a_wait_that_times_out_fails_and_compensates_naming_the_event():
    seq = ApprovalOrUndo.start({})
    run_jobs()
    assert status(seq) == Status.WAITING
    wake_when_due(seq)
    run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    assert "WaitFor('approved') timed out after 1s" in seq.error
    assert StepAttempt.objects.filter(sequence_id=seq.id, outcome="compensated").count() == 1
    # It failed on its WaitFor, which says so in its history.
    assert seq.current_step.startswith("WaitFor")
    failed = StepAttempt.objects.get(sequence_id=seq.id, outcome="failed")
    assert (failed.step_index, failed.error) == (1, seq.error)


def test_retrying_a_wait_that_timed_out_waits_for_the_event_again():
    seq = ApprovalOrUndo.start({})
    run_jobs()
    wake_when_due(seq)
    run_jobs()
    assert status(seq) == Status.FAILED
    seq.retry(force=True)  # compensations ran
    run_jobs()
    seq.refresh()
    assert seq.status == Status.WAITING  # not on to B without the event
    assert Ledger.objects.filter(sequence_id=seq.id, step="B").count() == 0
    seq.send("approved", {"late": True})
    run_jobs()
    assert seq.wait(5)["late"] is True
    assert Ledger.objects.filter(sequence_id=seq.id, step="B").count() == 1


def test_a_wait_that_times_out_can_go_on_without_the_event():
    seq = ApprovalOrOnward.start({})
    run_jobs()
    wake_when_due(seq)
    run_jobs()
    assert seq.wait(5)["trail"] == ["A", "B"]


def test_a_paused_wait_still_collects_events_and_takes_them_on_resume():
    seq = Approval.start({})
    run_jobs()
    seq.pause()
    seq.send("approved", {"while": "paused"})
    assert status(seq) == Status.PAUSED
    seq.resume()
    seq.refresh()
    assert seq.status == Status.PENDING
    run_jobs()
    assert seq.wait(5)["while"] == "paused"


def test_cancel_while_waiting():
    seq = Approval.start({})
    run_jobs()
    seq.cancel()
    assert seq.status == Status.CANCELED
    assert seq.record.waiting_for == ""


# -- the onboarding and the webhook of docs/waiting.md --------------------------------------


def test_the_onboarding_and_its_webhook():
    seq = Onboarding.start({}, key="user-42")
    run_jobs()
    assert status(seq) == Status.SLEEPING
    SequenceRecord.objects.filter(pk=seq.id).update(wake_at=timezone.now())  # three days on
    assert wake_due(pk=seq.id) == 1
    run_jobs()
    assert status(seq) == Status.WAITING
    client = Client()
    body = {"user_id": 42, "plan": "pro", "delivery_id": "d-1"}
    for _ in range(2):  # delivered twice
        response = client.post("/hooks/activated/", json.dumps(body), "application/json")
        assert response.status_code == 200
    run_jobs()
    assert status(seq) == Status.COMPLETED
    assert list(Ledger.objects.filter(sequence_id=seq.id).values_list("step", flat=True)) == [
        "welcome",
        "tips",
        "thanks (pro)",
    ]
    missing = client.post(
        "/hooks/activated/",
        json.dumps({**body, "user_id": 7}),
        "application/json",
    )
    assert missing.status_code == 404


# -- the command ------------------------------------------------------------------------------


def test_the_command_sends_events_lists_sleepers_and_shows_the_wait():
    sleeper = Snooze.start({})
    waiter = Approval.start({})
    run_jobs()
    out = io.StringIO()
    call_command("sequence", "list", "--status", "sleeping", "--json", stdout=out)
    assert [row["id"] for row in json.loads(out.getvalue())] == [sleeper.id]
    out = io.StringIO()
    call_command("sequence", "show", str(waiter.id), stdout=out)
    assert "waiting for 'approved'" in out.getvalue()
    out = io.StringIO()
    call_command(
        "sequence", "send", str(waiter.id), "approved", "--data", '{"ok": 1}', "--id", "e1",
        stdout=out,
    )  # fmt: skip
    assert f"Sent 'approved' to #{waiter.id}: it is now pending." in out.getvalue()
    out = io.StringIO()
    call_command("sequence", "show", str(waiter.id), stdout=out)
    assert "approved id e1" in out.getvalue()
