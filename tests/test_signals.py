"""Signals and hooks: sent after the commit that records each event; a receiver or hook
that raises is logged and stops nothing.

Steps run in this process, on a real RQ worker (burst mode) with real Redis, so the
receivers connected here see the signals the runner sends.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.db import connection

from sequence import Retry, Sequence, Step, signals
from sequence.models import SequenceRecord

from .lifecycle_support import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)

SIGNALS = {
    "started": signals.sequence_started,
    "step_completed": signals.step_completed,
    "step_failed": signals.step_failed,
    "completed": signals.sequence_completed,
    "failed": signals.sequence_failed,
    "canceled": signals.sequence_canceled,
    "paused": signals.sequence_paused,
    "resumed": signals.sequence_resumed,
    "retried": signals.sequence_retried,
}
hook_calls: list[tuple[str, int, Any]] = []


class Hello(Step):
    def perform(self) -> None:
        self.data["hello"] = True


def world(data: dict[str, Any]) -> dict[str, Any]:
    return {"world": True}


class AlwaysFails(Step):
    retry = Retry(max=1, interval=0)

    def perform(self) -> None:
        raise RuntimeError("no luck")


class Undoable(Step):
    def perform(self) -> None:
        self.data["undoable"] = True

    def compensate(self) -> None:
        hook_calls.append(("compensate", self.sequence.id, None))


class Greeting(Sequence):
    name = "signals.Greeting"
    steps = [Hello, world]

    def on_complete(self) -> None:
        hook_calls.append(("on_complete", self.id, dict(self.data)))

    def on_failure(self, error: str) -> None:
        hook_calls.append(("on_failure", self.id, error))


class Doomed(Sequence):
    name = "signals.Doomed"
    steps = [Undoable, AlwaysFails]

    def on_failure(self, error: str) -> None:
        hook_calls.append(("on_failure", self.id, error))


class BadHooks(Sequence):
    name = "signals.BadHooks"
    steps = [Hello]

    def on_complete(self) -> None:
        raise RuntimeError("hook broke")


class Journal:
    """Every signal received, with what the database said when it arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.receivers = []
        for label, signal in SIGNALS.items():
            receiver = self._receiver(label)
            signal.connect(receiver, weak=False)
            self.receivers.append((signal, receiver))

    def _receiver(self, label: str) -> Any:
        def receive(sender: Any, sequence: Any, **kwargs: Any) -> None:
            row = SequenceRecord.objects.get(pk=sequence.id)
            kwargs.update(
                sender=sender,
                sequence=sequence,
                in_transaction=connection.in_atomic_block,
                row_status=row.status,
                row_step_index=row.step_index,
            )
            self.events.append((label, kwargs))

        return receive

    def labels(self, sequence_id: int | None = None) -> list[str]:
        return [
            label
            for label, kwargs in self.events
            if sequence_id is None or kwargs["sequence"].id == sequence_id
        ]

    def close(self) -> None:
        for signal, receiver in self.receivers:
            signal.disconnect(receiver)


@pytest.fixture
def journal() -> Any:
    hook_calls.clear()
    journal = Journal()
    yield journal
    journal.close()


def test_a_run_sends_started_each_step_and_completed_after_each_commit(journal):
    seq = Greeting.start({"name": "Ada"})
    assert journal.labels() == ["started"]
    run_jobs()
    assert journal.labels() == ["started", "step_completed", "step_completed", "completed"]
    for label, kwargs in journal.events:
        assert kwargs["sender"] is Greeting
        assert kwargs["in_transaction"] is False, label  # sent after the commit, not inside
    first, second = journal.events[1][1], journal.events[2][1]
    assert (first["step"], first["step_index"], first["attempt"]) == ("Hello", 0, 1)
    assert (second["step"], second["step_index"]) == ("world", 1)
    # The database already shows each event when its signal arrives.
    assert first["row_step_index"] >= 1
    assert journal.events[3][1]["row_status"] == "completed"
    assert journal.events[3][1]["sequence"].data == {"name": "Ada", "hello": True, "world": True}
    assert hook_calls == [("on_complete", seq.id, {"name": "Ada", "hello": True, "world": True})]


def test_step_failed_says_whether_it_will_be_retried_then_failed_follows_compensation(journal):
    seq = Doomed.start({})
    run_jobs()
    assert journal.labels() == [
        "started",
        "step_completed",
        "step_failed",
        "step_failed",
        "failed",
    ]
    tries = [kwargs for label, kwargs in journal.events if label == "step_failed"]
    assert [(t["step"], t["attempt"], t["will_retry"]) for t in tries] == [
        ("AlwaysFails", 1, True),
        ("AlwaysFails", 2, False),
    ]
    assert tries[0]["error"] == "RuntimeError: no luck"
    assert tries[0]["row_status"] == "retrying"
    failed = journal.events[-1][1]
    assert failed["error"] == "AlwaysFails failed: RuntimeError: no luck"
    assert failed["row_status"] == "failed"
    assert failed["in_transaction"] is False
    # Compensations ran before on_failure, and each hook ran once.
    assert hook_calls == [
        ("compensate", seq.id, None),
        ("on_failure", seq.id, "AlwaysFails failed: RuntimeError: no luck"),
    ]


def test_pause_resume_cancel_and_retry_send_their_signals(journal):
    seq = Greeting.start({})
    seq.pause()
    seq.pause()  # no change, no signal
    seq.resume()
    seq.cancel()
    assert journal.labels(seq.id) == ["started", "paused", "resumed", "canceled"]
    assert all(kwargs["in_transaction"] is False for _, kwargs in journal.events)
    doomed = Doomed.start({})
    run_jobs()
    doomed.retry(force=True)  # its compensations ran
    assert journal.labels(doomed.id)[-1] == "retried"
    assert journal.events[-1][1]["row_status"] == "pending"


def test_a_failing_receiver_is_logged_and_stops_neither_the_others_nor_the_sequence(
    journal, caplog
):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise ValueError("receiver broke; api_key=abc123456")

    for signal in SIGNALS.values():
        signal.connect(broken, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="sequence"):
            seq = Greeting.start({})
            run_jobs()
    finally:
        for signal in SIGNALS.values():
            signal.disconnect(broken)
    seq.refresh()
    assert seq.status == "completed"
    assert journal.labels(seq.id) == ["started", "step_completed", "step_completed", "completed"]
    assert hook_calls == [("on_complete", seq.id, seq.data)]
    logged = [r for r in caplog.records if "raised" in r.getMessage()]
    assert len(logged) == 4  # one per signal sent
    text = caplog.text
    assert "receiver broke" in text
    assert "abc123456" not in text  # masked in logs too


def test_a_hook_that_raises_is_logged_and_the_sequence_still_completes(journal, caplog):
    with caplog.at_level(logging.ERROR, logger="sequence"):
        seq = BadHooks.start({})
        run_jobs()
    seq.refresh()
    assert seq.status == "completed"
    assert journal.labels(seq.id)[-1] == "completed"
    assert "hook broke" in caplog.text
