"""A completion is a completion: ``on_complete`` and ``sequence_completed`` only for a
sequence whose status is ``completed``, once.

Each test holds the last item of a sequence on a real worker (a test point after its
claim, or inside a ForEach element), pauses or cancels the sequence, then lets the item
commit: a canceled sequence stays canceled and announces no completion; a paused one
whose last step commits is completed, and says so once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sequence.engine.waiting import wake_due
from sequence.models import SequenceRecord
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import EndsOnForEach, EndsOnSleep, EndsOnStep, EndsOnWait

from .conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def ends(sequence_id: int) -> list[str]:
    steps = Ledger.objects.filter(sequence_id=sequence_id).order_by("id")
    return [
        s
        for s in steps.values_list("step", flat=True)
        if s in ("on_complete", "sequence_completed")
    ]


def held_last_item(workers, tmp_path, cls):
    """Start ``cls`` on a worker whose claim of item 2 (the last) waits for a file."""
    hold = tmp_path / "hold"
    points = {"after_claim": {"do": f"hold:{hold}", "step": 1}}
    workers.start(env={"SEQUENCE_TEST_POINTS": json.dumps(points)})
    seq = cls.start({})
    wait_for(lambda: Path(f"{hold}.reached").exists(), 30, "the last item's claim")
    return seq, hold


def settled(seq) -> SequenceRecord:
    """The row once the held item's claim is given back (committed, or released)."""
    wait_for(
        lambda: SequenceRecord.objects.filter(pk=seq.id, claim_token__isnull=True).exists(),
        30,
        "the held item to commit",
    )
    return SequenceRecord.objects.get(pk=seq.id)


def test_canceled_while_its_last_step_runs_it_stays_canceled_and_does_not_complete(
    workers, tmp_path
):
    seq, hold = held_last_item(workers, tmp_path, EndsOnStep)
    seq.cancel()
    Path(f"{hold}.release").touch()
    record = settled(seq)
    assert record.status == "canceled"
    assert record.data["trail"] == ["A", "B"]  # the step's result is kept
    assert ends(seq.id) == []


def test_paused_while_its_last_step_runs_it_completes_once(workers, tmp_path):
    seq, hold = held_last_item(workers, tmp_path, EndsOnStep)
    seq.pause()
    Path(f"{hold}.release").touch()
    record = settled(seq)
    assert record.status == "completed"
    wait_for(lambda: len(ends(seq.id)) >= 2, 10, "on_complete and the signal")
    assert ends(seq.id) == ["on_complete", "sequence_completed"]


def test_canceled_while_its_last_foreach_element_runs_it_does_not_complete(workers, tmp_path):
    hold = tmp_path / "hold"
    workers.start()
    seq = EndsOnForEach.start({"numbers": [3], "hold": str(hold)})
    wait_for(lambda: Path(f"{hold}.reached").exists(), 30, "the element to run")
    seq.cancel()
    Path(f"{hold}.release").touch()
    wait_for(
        lambda: Ledger.objects.filter(sequence_id=seq.id, step="square 0").exists(),
        30,
        "the element to finish",
    )
    record = settled(seq)
    assert record.status == "canceled"
    assert ends(seq.id) == []


@pytest.mark.parametrize("cls", [EndsOnSleep, EndsOnWait], ids=["Sleep", "WaitFor"])
def test_canceled_while_its_last_sleep_or_wait_is_taken_it_does_not_complete(
    workers, tmp_path, cls
):
    seq, hold = held_last_item(workers, tmp_path, cls)
    seq.cancel()
    Path(f"{hold}.release").touch()
    record = settled(seq)
    assert record.status == "canceled"
    if cls is EndsOnSleep:
        # Its time comes and goes: nothing wakes a canceled sequence.
        wake_at = SequenceRecord.objects.get(pk=seq.id).wake_at
        wait_for(lambda: wake_at is None or wake_at.timestamp() < time.time(), 10, "its time")
        wake_due()
    else:
        with pytest.raises(Exception, match=r"(?i)cancel"):
            seq.send("go")
    assert SequenceRecord.objects.get(pk=seq.id).status == "canceled"
    assert ends(seq.id) == []
