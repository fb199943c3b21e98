"""Fault 12: pause, resume, cancel and retry racing with steps in flight.

No step starts while its sequence is paused or canceled (the checker reads every claim
in the journal); a step in flight when pause or cancel lands keeps its result; a step
that heartbeats stops when paused and runs again on resume; every sequence ends
completed or canceled once the requests stop."""

from __future__ import annotations

import contextlib
import random
import time

import pytest

from sequence import InvalidTransition, Sequence
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from sequence.ops import faults
from testproject.testapp.faults import BeatingChain, FaultChain, FixableChain
from testproject.testapp.models import BodyRun

from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

CHAOS_SECONDS = 8


def test_pause_resume_cancel_and_retry_race_steps_in_flight(fleet):
    seqs = [FaultChain.start({"sleep": [0.05, 0.15]}) for _ in range(30)]
    seqs += [BeatingChain.start({"beats": 4}) for _ in range(6)]
    seqs += [FixableChain.start({"sleep": [0.05, 0.15]}) for _ in range(8)]
    ids = [s.id for s in seqs]
    fleet.start(2)
    fleet.start(kind="fork")
    rng = random.Random(12)
    asked: dict[str, int] = {"pause": 0, "resume": 0, "cancel": 0, "retry": 0}
    end = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < end:
        action = rng.choices(["pause", "resume", "cancel", "retry"], [40, 40, 4, 16])[0]
        failed = list(
            SequenceRecord.objects.filter(pk__in=ids, status="failed").values_list("pk", flat=True)
        )
        handle = Sequence.get(rng.choice(failed if action == "retry" and failed else ids))
        try:
            if action == "retry":
                handle.retry(data={"fixed": rng.random() < 0.3})  # may fail again
            else:
                getattr(handle, action)()
            asked[action] += 1
        except InvalidTransition:
            pass
        time.sleep(rng.uniform(0.005, 0.03))
    # The requests stop: resume what is paused, fix what failed, and let them finish.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waiting = SequenceRecord.objects.filter(pk__in=ids, status__in=["paused", "failed"])
        for record in waiting:
            handle = Sequence.get(record.pk)
            with contextlib.suppress(InvalidTransition):
                handle.resume() if record.status == "paused" else handle.retry(data={"fixed": True})
        now = settle(
            ids, timeout=60, done={Status.COMPLETED, Status.CANCELED, Status.PAUSED, Status.FAILED}
        )
        if all(status in (Status.COMPLETED, Status.CANCELED) for status in now.values()):
            break
    fenced = BodyRun.objects.filter(seq_id__in=ids, note="fenced").count()
    report = check(
        "12 pause/resume/cancel/retry racing steps", ids,
        expect={Status.COMPLETED, Status.CANCELED},
        faults={**{f"{k}_applied": v for k, v in asked.items()}, "heartbeats_fenced": fenced},
    )  # fmt: skip
    assert_ok(report)


def test_pausing_a_heartbeating_step_stops_it_and_resume_runs_it_again():
    """In one process: the step's first heartbeat finds its sequence paused."""
    seq = BeatingChain.start({"beats": 2})
    faults.deliver(seq.id, 0, 0, worker="w1")
    paused = []

    def pause_once(context):
        if not paused:
            paused.append(Sequence.get(context["sequence"]))
            paused[0].pause()

    with faults.armed("heartbeat", pause_once, sequence=seq.id):
        faults.deliver(seq.id, 1, 1, worker="w2")
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index, record.claim_token) == ("paused", 1, None)
    assert BodyRun.objects.filter(seq_id=seq.id, step="Beating", note="fenced").count() == 1
    Sequence.get(seq.id).resume()
    record.refresh_from_db()
    while record.status != Status.COMPLETED:
        faults.deliver(record.pk, record.step_index, record.epoch, worker="w3")
        record.refresh_from_db()
    runs = BodyRun.objects.filter(seq_id=seq.id, step="Beating").exclude(note="fenced")
    assert runs.count() == 2  # stopped once, run again after resume
    assert_ok(check("12 heartbeat after pause stops the step", [seq.id], faults={"pauses": 1}))
