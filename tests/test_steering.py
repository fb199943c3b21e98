"""Pause, resume, cancel and retry: the transition table, idempotence, and races."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from sequence import InvalidData, InvalidTransition, UnknownSequence, signals
from sequence.engine import steering
from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import (
    ACTIVE,
    IDEMPOTENT,
    REQUESTS,
    TERMINAL,
    TRANSITIONS,
    Status,
    allows,
    available,
    sources,
)
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import Compensating, Slow, ThreeSteps

from .conftest import wait_for
from .lifecycle_support import job_status, make_record, queued_jobs, run_jobs

P, R, T, Z = Status.PENDING, Status.RUNNING, Status.RETRYING, Status.PAUSED
C, F, X = Status.COMPLETED, Status.FAILED, Status.CANCELED
K, S, W, Q = Status.COMPENSATING, Status.SLEEPING, Status.WAITING, Status.QUEUED
SAME, RAISES = "same", "raises"

# What each request does from each status, written out as API.md says it (not derived
# from the table, which the next test checks against this).
EXPECTED: dict[str, dict[Status, str]] = {
    "pause": {
        Q: Z,
        P: Z,
        R: Z,
        T: Z,
        Z: SAME,
        C: RAISES,
        F: RAISES,
        X: RAISES,
        K: RAISES,
        S: Z,
        W: Z,
    },
    "resume": {
        Q: SAME,
        P: SAME,
        R: SAME,
        T: SAME,
        Z: P,
        C: RAISES,
        F: RAISES,
        X: RAISES,
        K: RAISES,
        S: SAME,
        W: SAME,
    },
    "cancel": {Q: X, P: X, R: X, T: X, Z: X, C: RAISES, F: RAISES, X: SAME, K: RAISES, S: X, W: X},
    "retry": {
        Q: RAISES,
        P: RAISES,
        R: RAISES,
        T: RAISES,
        Z: RAISES,
        C: RAISES,
        F: P,
        X: RAISES,
        K: RAISES,
        S: RAISES,
        W: RAISES,
    },
}


def ledger(seq_id: int) -> list[str]:
    return list(
        Ledger.objects.filter(sequence_id=seq_id).order_by("id").values_list("step", flat=True)
    )


def status_of(pk: int) -> str:
    return SequenceRecord.objects.values_list("status", flat=True).get(pk=pk)


class Received:
    """Collects one signal's sends in this process."""

    def __init__(self, signal: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self.signal = signal
        signal.connect(self.receive, weak=False)

    def receive(self, sender: Any, **kwargs: Any) -> None:
        self.calls.append({"sender": sender, **kwargs})

    def close(self) -> None:
        self.signal.disconnect(self.receive)


@pytest.fixture
def received() -> Any:
    made: list[Received] = []

    def make(signal: Any) -> Received:
        made.append(Received(signal))
        return made[-1]

    yield make
    for item in made:
        item.close()


def in_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released at once; return results or exceptions."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except Exception as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


# -- the table -------------------------------------------------------------------------------


def test_the_table_agrees_with_the_documented_behaviour():
    for action, by_status in EXPECTED.items():
        for status, outcome in by_status.items():
            if outcome == RAISES:
                assert status not in sources(action), (action, status)
                assert status not in IDEMPOTENT[action], (action, status)
            elif outcome == SAME:
                assert status in IDEMPOTENT[action], (action, status)
            else:
                assert allows(action, status, outcome), (action, status, outcome)


def test_the_table_names_only_statuses_and_finished_sequences_stay_finished():
    for action, edges in TRANSITIONS.items():
        for source, targets in edges.items():
            assert isinstance(source, Status)
            assert targets <= set(Status), action
            if source in TERMINAL and action not in ("retry", "rewind", "claim"):
                # Only a retry (or a failed job requeued by hand) reopens a finished
                # sequence; a step finishing after a cancel leaves it canceled.
                assert targets == {source}, (action, source)
    assert set(REQUESTS) == set(IDEMPOTENT)
    assert available(Status.PAUSED) == ["resume", "cancel"]
    assert available(Status.FAILED) == ["retry"]
    assert available(Status.COMPLETED) == []
    assert sources("pause") == ACTIVE | {S, W, Q}


@pytest.mark.django_db
@pytest.mark.parametrize("action", REQUESTS)
@pytest.mark.parametrize("status", list(Status))
def test_each_request_from_each_status_moves_does_nothing_or_raises(action, status, received):
    record = make_record(status=status, step_index=1, error="x" if status == F else "")
    expected = EXPECTED[action][status]
    announced = received(
        {
            "pause": signals.sequence_paused,
            "resume": signals.sequence_resumed,
            "cancel": signals.sequence_canceled,
            "retry": signals.sequence_retried,
        }[action]
    )
    before = SequenceRecord.objects.get(pk=record.pk)
    if expected == RAISES:
        with pytest.raises(InvalidTransition, match=f"Cannot {action} .*: it is {status}"):
            steering.ACTIONS[action](record.pk)
        after = SequenceRecord.objects.get(pk=record.pk)
        assert (after.status, after.epoch, after.updated_at) == (
            before.status,
            before.epoch,
            before.updated_at,
        )
        return
    result = steering.ACTIONS[action](record.pk)
    after = SequenceRecord.objects.get(pk=record.pk)
    assert result.status == after.status
    if expected == SAME:
        assert (after.status, after.epoch, after.updated_at) == (
            before.status,
            before.epoch,
            before.updated_at,
        )
    else:
        assert after.status == expected
    # The signal goes out when the request's transaction commits, and only on a change.
    assert announced.calls == []


@pytest.mark.django_db
def test_requests_on_an_unknown_sequence_say_so():
    for action in REQUESTS:
        with pytest.raises(UnknownSequence, match="No sequence has the id 424242"):
            steering.ACTIONS[action](424242)


@pytest.mark.django_db
def test_retry_refuses_data_that_cannot_be_stored_and_changes_nothing():
    record = make_record(status=F, step_index=1, data={"n": 1})
    with pytest.raises(InvalidData, match="set"):
        steering.retry(record.pk, {"bad": {1, 2}})
    with pytest.raises(InvalidData, match="takes a dict"):
        steering.retry(record.pk, ["not", "a", "dict"])  # type: ignore[arg-type]
    record.refresh_from_db()
    assert (record.status, record.data) == (F, {"n": 1})


# -- behaviour with queued jobs and real workers --------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_pause_lets_the_step_in_flight_finish_keeps_its_result_and_starts_nothing(workers):
    workers.start()
    seq = Slow.start({"sleep": 1.5})
    wait_for(lambda: status_of(seq.id) == R, 30, "the slow step to start")
    seq.pause()
    assert seq.status == Z
    wait_for(
        lambda: StepAttempt.objects.filter(sequence_id=seq.id, outcome="succeeded").exists(),
        30,
        "the step in flight to finish",
    )
    seq.refresh()
    assert seq.status == Z
    assert seq.step_index == 1
    assert seq.data["trail"] == ["SlowStep"]  # its result is kept
    assert queued_jobs() == []  # and nothing further is queued
    assert ledger(seq.id) == ["SlowStep"]

    seq.resume()
    assert seq.status == P
    assert seq.wait(30)["trail"] == ["SlowStep", "B"]
    assert ledger(seq.id) == ["SlowStep", "B"]


@pytest.mark.django_db(transaction=True)
def test_resume_while_the_step_is_still_in_flight_lets_it_carry_on(workers, tmp_path):
    hold = tmp_path / "hold"
    env = {"SEQUENCE_TEST_POINTS": json.dumps({"before_commit": {"do": f"hold:{hold}", "step": 0}})}
    workers.start(env=env)
    seq = ThreeSteps.start({})
    wait_for(lambda: Path(f"{hold}.reached").exists(), 30, "the first step to run")
    seq.pause()
    seq.resume()
    # The step still holds its claim: the sequence is running again, nothing re-queued.
    assert seq.status == R
    assert queued_jobs() == []
    Path(f"{hold}.release").touch()
    assert seq.wait(30)["trail"] == ["A", "B", "C"]
    assert ledger(seq.id) == ["A", "B", "C"]


@pytest.mark.django_db(transaction=True)
def test_a_pause_racing_the_commit_keeps_the_result_and_starts_no_step(workers, tmp_path):
    hold = tmp_path / "hold"
    env = {"SEQUENCE_TEST_POINTS": json.dumps({"before_commit": {"do": f"hold:{hold}", "step": 0}})}
    workers.start(env=env)
    seq = ThreeSteps.start({})
    wait_for(lambda: Path(f"{hold}.reached").exists(), 30, "the first step to reach its commit")
    seq.pause()  # between the step's end and its commit
    Path(f"{hold}.release").touch()
    wait_for(lambda: SequenceRecord.objects.get(pk=seq.id).step_index == 1, 30, "the commit")
    seq.refresh()
    assert seq.status == Z
    assert seq.data["trail"] == ["A"]
    assert queued_jobs() == []
    seq.resume()
    assert seq.wait(30)["trail"] == ["A", "B", "C"]
    assert ledger(seq.id) == ["A", "B", "C"]


@pytest.mark.django_db(transaction=True)
def test_a_pause_racing_the_claim_stops_the_step_before_it_starts(workers, tmp_path):
    # The job is taken out of the queue, but the sequence is paused before its claim.
    seq = ThreeSteps.start({})
    seq.pause()
    workers.start()
    wait_for(lambda: queued_jobs() == [], 30, "the worker to take the job")
    wait_for(lambda: job_status(SequenceRecord.objects.get(pk=seq.id)) is None, 30, "job end")
    assert ledger(seq.id) == []
    assert status_of(seq.id) == Z
    seq.resume()
    assert seq.wait(30)["trail"] == ["A", "B", "C"]
    assert ledger(seq.id) == ["A", "B", "C"]


@pytest.mark.django_db(transaction=True)
def test_cancel_deletes_the_queued_job_from_rq_and_a_copy_that_runs_anyway_does_nothing(workers):
    seq = ThreeSteps.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    assert job_status(record) == "queued"
    seq.cancel()
    assert seq.status == X
    assert job_status(record) is None  # deleted: RQ would keep a canceled job forever
    assert queued_jobs() == []
    # The job delivered anyway (requeued by hand, or a copy): it finds the sequence canceled.
    from sequence.engine.rq.dispatch import enqueue_step

    enqueue_step(record.pk, record.step_index, record.epoch, record.queue, None)
    workers.start(burst=True)[0].wait(30)
    assert ledger(seq.id) == []
    assert status_of(seq.id) == X
    seq.cancel()  # again: nothing to do
    assert seq.status == X


@pytest.mark.django_db(transaction=True)
def test_cancel_while_a_step_runs_keeps_it_canceled(workers, tmp_path):
    hold = tmp_path / "hold"
    env = {"SEQUENCE_TEST_POINTS": json.dumps({"after_claim": {"do": f"hold:{hold}", "step": 0}})}
    workers.start(env=env)
    seq = ThreeSteps.start({})
    wait_for(lambda: Path(f"{hold}.reached").exists(), 30, "the first step to be claimed")
    seq.cancel()
    Path(f"{hold}.release").touch()
    wait_for(lambda: ledger(seq.id) == ["A"], 30, "the step in flight to finish")
    wait_for(lambda: SequenceRecord.objects.get(pk=seq.id).claim_token is None, 30, "its release")
    assert status_of(seq.id) == X
    assert queued_jobs() == []
    assert ledger(seq.id) == ["A"]


@pytest.mark.django_db(transaction=True)
def test_retry_merges_corrections_and_runs_the_failed_step_with_fresh_attempts():
    seq = Compensating.start({"note": "first"})
    run_jobs()
    seq.refresh()
    assert seq.status == F
    failed_attempts = StepAttempt.objects.filter(sequence_id=seq.id, step="Broken").count()
    assert failed_attempts == 2
    seq.retry(data={"fixed": True}, force=True)  # its compensations ran
    assert seq.status == P
    assert seq.record.attempt == 0
    assert seq.error == ""
    assert seq.data == {"note": "first", "trail": ["Undo"], "fixed": True}
    run_jobs()
    seq.refresh()
    assert seq.status == C
    assert ledger(seq.id).count("Broken") == 3  # two failures, then one run after the retry
    with pytest.raises(InvalidTransition, match="it is completed"):
        seq.retry()


# -- races between requests ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_people_pausing_at_once_all_see_it_paused_and_it_is_announced_once(received):
    paused = received(signals.sequence_paused)
    seq = ThreeSteps.start({})
    results = in_threads(8, lambda i: steering.pause(seq.id))
    assert [r.status for r in results] == [Z] * 8
    assert len(paused.calls) == 1
    assert paused.calls[0]["sequence"].id == seq.id


@pytest.mark.django_db(transaction=True)
def test_resuming_twice_at_once_queues_the_next_step_once(received):
    resumed = received(signals.sequence_resumed)
    seq = ThreeSteps.start({})
    seq.pause()
    before = set(queued_jobs())
    results = in_threads(2, lambda i: steering.resume(seq.id))
    assert [r.status for r in results] == [P, P]
    new_jobs = set(queued_jobs()) - before
    record = SequenceRecord.objects.get(pk=seq.id)
    assert new_jobs == {f"seq-{seq.id}-0-{record.epoch}"}
    assert len(resumed.calls) == 1


@pytest.mark.django_db(transaction=True)
def test_a_storm_of_pauses_resumes_and_cancels_never_runs_a_step_twice():
    sequences = [ThreeSteps.start({"n": i}) for i in range(4)]

    def churn(i: int) -> None:
        for round_ in range(15):
            target = sequences[(i + round_) % len(sequences)].id
            action = ("pause", "resume", "pause", "resume", "cancel")[(i * 7 + round_) % 5]
            if action == "cancel" and (i + round_) % 3:
                continue
            with contextlib.suppress(InvalidTransition):  # e.g. pausing a canceled one
                steering.ACTIONS[action](target)

    in_threads(6, churn)
    for seq in sequences:
        if status_of(seq.id) == Z:
            steering.resume(seq.id)
    run_jobs()
    for seq in sequences:
        record = SequenceRecord.objects.get(pk=seq.id)
        steps = ledger(seq.id)
        assert record.status in (C, X), record
        assert steps == ["A", "B", "C"][: len(steps)], steps  # in order, each at most once
        if record.status == C:
            assert steps == ["A", "B", "C"]
            assert record.data["trail"] == steps


@pytest.mark.django_db(transaction=True)
def test_signals_for_requests_wait_for_the_commit_and_vanish_on_rollback(received):
    paused = received(signals.sequence_paused)
    canceled = received(signals.sequence_canceled)
    seq = ThreeSteps.start({})
    with transaction.atomic():
        steering.pause(seq.id)
        assert paused.calls == []
    assert len(paused.calls) == 1
    try:
        with transaction.atomic():
            steering.cancel(seq.id)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert canceled.calls == []
    assert status_of(seq.id) == Z
    # The job was not canceled either: the rollback undid the cancel.
    assert get_queue("default").get_job_ids() == [f"seq-{seq.id}-0-0"]
