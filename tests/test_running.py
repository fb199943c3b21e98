"""Sequences run end to end on real worker processes."""

from __future__ import annotations

import pytest

from sequence import Sequence
from sequence.models import StepAttempt
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import (
    Arithmetic,
    Compensating,
    FlakySequence,
    ThreeSteps,
    WithSubSequence,
)

pytestmark = pytest.mark.django_db(transaction=True)


def test_steps_run_in_order_and_share_data(workers):
    workers.start()
    seq = ThreeSteps(user="ada")
    assert seq.wait(30) == {"user": "ada", "trail": ["A", "B", "C"]}
    assert list(Ledger.objects.order_by("id").values_list("step", flat=True)) == ["A", "B", "C"]
    assert str(seq.progress) == "3/3"
    assert seq.current_step is None
    # Each step's change, the list it appended to in place compared with the list as read.
    assert [h["changes"] for h in seq.history()] == [
        {"added": {"trail": ["A"]}, "changed": {}, "removed": []},
        {"added": {}, "changed": {"trail": [["A"], ["A", "B"]]}, "removed": []},
        {"added": {}, "changed": {"trail": [["A", "B"], ["A", "B", "C"]]}, "removed": []},
    ]


def test_returned_dict_merges_and_functions_are_steps(workers):
    workers.start()
    seq = Arithmetic.start({"n": 4})
    assert seq.wait(30) == {"n": 4, "doubled": 8, "plus_one": 9, "seen": [8, 9]}
    assert [a.step for a in StepAttempt.objects.filter(sequence_id=seq.id)] == [
        "Double", "add_one", "remember",
    ]  # fmt: skip


def test_sub_sequence_steps_run_in_its_place(workers):
    workers.start()
    seq = WithSubSequence.start({})
    assert seq.plan == ["A", "Inner.B", "Inner.C"]
    assert seq.wait(30)["trail"] == ["A", "B", "C"]


def test_failed_attempt_leaves_data_unchanged_and_retry_succeeds(workers):
    workers.start()
    seq = FlakySequence.start({"fail_times": 1})
    data = seq.wait(30)
    assert "poisoned" not in data
    assert data["attempts_seen"] == 2
    outcomes = list(
        StepAttempt.objects.filter(sequence_id=seq.id, step="Flaky").values_list(
            "attempt", "outcome"
        )
    )
    assert outcomes == [(1, "failed"), (2, "succeeded")]


def test_sequence_get_finds_the_subclass(workers):
    workers.start()
    seq = Compensating.start({})
    loaded = Sequence.get(seq.id)
    assert type(loaded) is Compensating
    assert loaded.name == "testapp.Compensating"
