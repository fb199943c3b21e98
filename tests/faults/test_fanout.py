"""Fault 17: a ForEach survives what a step survives.

A kill storm while 200 elements run on 3 workers, and duplicate element jobs: every
element is recorded once, the results are complete and in order, nothing is stuck.
"""

from __future__ import annotations

import random
import time

import pytest

from sequence.engine.rq.dispatch import ITEM, enqueue_step
from sequence.engine.states import Status
from sequence.models import SequenceItem, SequenceRecord, StepAttempt
from sequence.ops import faults
from testproject.testapp.sequences import SquaresAtOnce

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


def test_a_kill_storm_during_a_foreach_of_200_elements_loses_and_doubles_nothing(fleet):
    numbers = list(range(200))
    seq = SquaresAtOnce.start({"numbers": numbers, "slow": 0.05})
    fleet.start(3)
    wait_for(lambda: SequenceItem.objects.filter(sequence_id=seq.id).exists(), timeout=40)
    kills = 0
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(0.8)
        alive = fleet.alive()
        if alive:
            fleet.replace(random.choice(alive))
            kills += 1
    settle([seq.id], timeout=150)
    assert_ok(check("17 kill storm in a ForEach", [seq.id], faults={"killed": kills}))
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == Status.COMPLETED
    assert [r["n"] for r in record.data["squares"]] == [n * n for n in numbers]
    succeeded = StepAttempt.objects.filter(
        sequence_id=seq.id, item__isnull=False, outcome="succeeded"
    )
    assert sorted(succeeded.values_list("item", flat=True)) == list(range(200))


def test_duplicate_element_jobs_run_each_element_once(fleet):
    seq = SquaresAtOnce.start({"numbers": list(range(8))})
    from tests.lifecycle_support import run_jobs  # noqa: F401 (documents the in-process path)

    record = SequenceRecord.objects.get(pk=seq.id)
    spec = SquaresAtOnce.step_named(record.plan[0])
    fleet.start(2)
    wait_for(lambda: SequenceItem.objects.filter(sequence_id=seq.id).exists(), timeout=40)
    record.refresh_from_db()
    for index in range(8):
        for _ in range(2):  # each element's job twice more
            enqueue_step(seq.id, 0, record.epoch, "default", spec, kind=ITEM, item=index)
    faults.deliver(seq.id, 0, record.epoch - 1, kind=ITEM, item=3, worker="stale")
    settle([seq.id], timeout=60)
    assert_ok(check("17 duplicate element jobs", [seq.id], faults={"duplicates": 16}))
    succeeded = StepAttempt.objects.filter(
        sequence_id=seq.id, item__isnull=False, outcome="succeeded"
    )
    assert sorted(succeeded.values_list("item", flat=True)) == list(range(8))
