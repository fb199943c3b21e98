"""Fault 14: Hypothesis interleaves deliveries (in order, duplicated, stale and forged),
crashes at every test point, lost jobs, pause, resume, cancel and sweeps, and the
checker's invariants hold after every rule; once the faults stop, a sweep and the
remaining deliveries finish every sequence."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import pytest
from django.db.models.functions import Now
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sequence import InvalidTransition, Sequence
from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import Status
from sequence.models import SequenceRecord, WorkerBeat
from sequence.ops import faults
from testproject.testapp.faults import FaultChain

from .checker import assert_ok, check

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

EXAMPLES, STEPS = 25, 30
CRASH_POINTS = ["after_claim", "before_commit", "commit_ack", "after_commit"]
TOTALS: Counter[str] = Counter()
ALL_IDS: list[int] = []


class Interleavings(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.queue = get_queue("default")
        self.queue.connection.flushdb()
        self.ids: list[int] = []
        self.seen: list[tuple[int, int, int]] = []
        self.workers = 0

    def _worker(self) -> str:
        self.workers += 1
        return f"hypothesis-{os.getpid()}-{len(ALL_IDS)}-{self.workers}"

    def _pop(self) -> tuple[int, int, int] | None:
        job = self.queue.connection.lpop(self.queue.key)
        if job is None:
            return None
        _, seq_id, step, epoch = job.decode().split("-")
        return int(seq_id), int(step), int(epoch)

    def _deliver(self, job: tuple[int, int, int], worker: str | None = None) -> None:
        self.seen.append(job)
        faults.deliver(*job, worker=worker or self._worker())
        TOTALS["deliveries"] += 1

    @rule()
    def start(self) -> None:
        seq = FaultChain.start({})
        self.ids.append(seq.id)
        ALL_IDS.append(seq.id)

    @precondition(lambda self: self.ids)
    @rule()
    def deliver_next(self) -> None:
        job = self._pop()
        if job is not None:
            self._deliver(job)

    @precondition(lambda self: self.ids)
    @rule(point=st.sampled_from(CRASH_POINTS))
    def crash_during_delivery(self, point: str) -> None:
        job = self._pop()
        if job is None:
            return
        worker = self._worker()
        with faults.armed(point, "raise"), contextlib.suppress(faults.SimulatedCrash):
            self._deliver(job, worker)
        # The process "died": its beats stop (it shows as stopped at once).
        WorkerBeat.objects.create(
            name=worker, pid=0, started_at=Now(), last_seen=Now(), stopped_at=Now()
        )
        TOTALS[f"crash_{point}"] += 1

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def deliver_again(self, data: Any) -> None:
        self._deliver(data.draw(st.sampled_from(self.seen)))
        TOTALS["duplicates"] += 1

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def deliver_forged(self, data: Any) -> None:
        seq_id = data.draw(st.sampled_from(self.ids))
        record = SequenceRecord.objects.get(pk=seq_id)
        step = data.draw(st.integers(0, 3))
        epoch = data.draw(st.integers(max(0, record.epoch - 2), record.epoch + 2))
        self._deliver((seq_id, step, epoch))
        TOTALS["forged_or_stale"] += 1

    @precondition(lambda self: self.ids)
    @rule()
    def lose_a_job(self) -> None:
        if self._pop() is not None:
            TOTALS["jobs_lost"] += 1

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), action=st.sampled_from(["pause", "resume", "cancel"]))
    def request(self, data: Any, action: str) -> None:
        handle = Sequence.get(data.draw(st.sampled_from(self.ids)))
        with contextlib.suppress(InvalidTransition):
            getattr(handle, action)()
            TOTALS[action] += 1

    @precondition(lambda self: self.ids)
    @rule()
    def sweep(self) -> None:
        faults.sweep(grace=0)
        TOTALS["sweeps"] += 1

    @invariant()
    def invariants_hold(self) -> None:
        if self.ids:
            every = set(Status.values)
            assert_ok(check("14 hypothesis", self.ids, expect=every, write=False))

    def teardown(self) -> None:
        # The faults stop: resume what is paused, sweep, deliver what is queued.
        for _ in range(400):
            job = self._pop()
            if job is not None:
                self._deliver(job)
                continue
            for record in SequenceRecord.objects.filter(pk__in=self.ids, status="paused"):
                Sequence.get(record.pk).resume()
            if not faults.sweep(grace=0) and self.queue.count == 0:
                break
        final = {Status.COMPLETED, Status.CANCELED, Status.FAILED}
        assert_ok(check("14 hypothesis", self.ids, expect=final, write=False))
        for record in SequenceRecord.objects.filter(pk__in=self.ids, status="failed"):
            assert record.error.startswith("worker died during step"), record.error


def test_interleaved_faults_keep_every_invariant():
    TOTALS.clear()
    ALL_IDS.clear()
    run_state_machine_as_test(
        Interleavings,
        settings=hypothesis_settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert_ok(
        check(
            "14 Hypothesis stateful interleavings", ALL_IDS,
            expect={Status.COMPLETED, Status.CANCELED, Status.FAILED},
            faults={**TOTALS, "examples": EXAMPLES, "max_steps": STEPS},
        )
    )  # fmt: skip
