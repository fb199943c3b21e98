"""What each attempt changed in the data: recorded with its commit, shown by history().

Database-only: every sequence runs through drain(), in this process.
"""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from sequence import Fail, ForEach, Retry, Sequence, Step, WaitFor
from sequence.declare.masking import MASK
from sequence.engine import history
from sequence.engine.history import TOO_LARGE
from sequence.models import SequenceRecord
from sequence.testing import drain

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("testing")]

NOTHING = {"added": {}, "changed": {}, "removed": []}


@pytest.fixture
def testing() -> Any:
    with override_settings(SEQUENCE_TESTING=True):
        yield


class Quote(Step):
    def perform(self) -> dict[str, Any]:
        return {"price": 120, "draft": None}


class Discount(Step):
    """Fails its first attempt (its change is dropped), then lowers the price."""

    retry = Retry(max=2, interval=1)

    def perform(self) -> None:
        self.data["poisoned"] = True
        if self.attempt == 1:
            raise RuntimeError("rates not loaded")
        del self.data["poisoned"]
        del self.data["draft"]
        self.data["price"] = 100
        self.data["api_token"] = "tok-123456789"

    def compensate(self) -> None:
        pass


class Refuse(Step):
    def perform(self) -> None:
        if not self.data.get("allowed"):
            raise Fail("not allowed")


class Pricing(Sequence):
    name = "history_tests.Pricing"
    steps = [Quote, Discount, Refuse]


class Approval(Sequence):
    name = "history_tests.Approval"
    steps = [Quote, WaitFor("approved")]


def double(item: int, data: dict[str, Any]) -> int:
    return item * 2


class Fan(Sequence):
    name = "history_tests.Fan"
    steps = [ForEach("numbers", double, into="doubled")]


def rows(seq: Sequence) -> list[tuple[str, int, str, dict[str, Any]]]:
    return [(h["step"], h["attempt"], h["outcome"], h["changes"]) for h in seq.history()]


def test_each_attempt_records_what_it_changed_and_a_failed_one_nothing() -> None:
    seq = Pricing.start({"customer": "ada"})
    drain()
    assert rows(seq) == [
        ("Quote", 1, "succeeded", {**NOTHING, "added": {"price": 120, "draft": None}}),
        ("Discount", 1, "retrying", NOTHING),  # failed, and RQ tried it again
        (
            "Discount",
            2,
            "succeeded",
            {"added": {"api_token": MASK}, "changed": {"price": [120, 100]}, "removed": ["draft"]},
        ),
        ("Refuse", 1, "failed", NOTHING),
        ("Discount", 1, "compensated", NOTHING),  # a compensation's data is not kept
    ]
    first = seq.history()[0]
    assert first["error"] == ""
    assert first["started_at"] <= first["finished_at"]
    assert seq.history()[3]["error"].endswith("not allowed")


def test_an_operators_edit_in_a_retry_is_a_row_of_its_own() -> None:
    seq = Pricing.start({})
    drain()
    seq.retry(data={"allowed": True, "note": "ok'd by support"}, force=True)
    edit = seq.history()[-1]
    assert (edit["step"], edit["attempt"], edit["outcome"]) == ("Refuse", 0, "edited")
    assert edit["changes"] == {**NOTHING, "added": {"allowed": True, "note": "ok'd by support"}}
    drain()
    assert seq.history()[-1]["changes"] == NOTHING  # Refuse succeeded, changing nothing
    seq.refresh()
    assert seq.status == "completed"


def test_a_retry_that_changes_nothing_writes_no_row() -> None:
    seq = Pricing.start({})
    drain()
    before = len(seq.history())
    seq.retry(force=True)
    assert len(seq.history()) == before


def test_the_event_a_waitfor_merged_is_its_change() -> None:
    seq = Approval.start({})
    drain()
    seq.send("approved", {"by": "grace", "price": 90}, id="approval-1")
    drain()
    began, merged = seq.history()[-2:]
    assert began["step"] == merged["step"]
    assert began["step"].startswith("WaitFor")
    assert began["changes"] == NOTHING  # the wait began
    assert (began["outcome"], merged["outcome"]) == ("succeeded", "received")
    assert merged["changes"] == {
        **NOTHING, "added": {"by": "grace"}, "changed": {"price": [120, 90]}
    }  # fmt: skip


def test_a_foreach_records_its_results_as_its_change() -> None:
    seq = Fan.start({"numbers": [1, 2, 3]})
    drain()
    history = rows(seq)
    assert [h[3] for h in history[:-1]] == [NOTHING] * 3  # the elements, one row each
    assert history[-1][3] == {**NOTHING, "added": {"doubled": [2, 4, 6]}}


@override_settings(SEQUENCE_HISTORY_CHANGE_LIMIT=64)
def test_a_change_over_the_limit_keeps_its_keys_only() -> None:
    seq = Pricing.start({"draft": "x" * 100})
    drain()
    assert seq.history()[0]["changes"] == {
        "added": {"price": TOO_LARGE},
        "changed": {"draft": [TOO_LARGE, TOO_LARGE]},
        "removed": [],
        "too_large": True,
    }


def test_show_history_prints_each_attempts_change_masked() -> None:
    seq = Pricing.start({})
    drain()
    out = StringIO()
    call_command("sequence", "show", str(seq.id), "--history", stdout=out)
    lines = [line.strip() for line in out.getvalue().splitlines()]
    quote = lines.index(next(line for line in lines if line.startswith("1  Quote")))
    assert lines[quote + 1 : quote + 3] == ["+ draft: null", "+ price: 120"]
    assert "~ price: 120 -> 100" in lines
    assert f'+ api_token: "{MASK}"' in lines
    assert "- draft" in lines
    assert "tok-123456789" not in out.getvalue()
    plain = StringIO()
    call_command("sequence", "show", str(seq.id), stdout=plain)
    assert "~ price: 120 -> 100" not in plain.getvalue()
    detail = StringIO()
    call_command("sequence", "show", str(seq.id), "--json", stdout=detail)
    attempts = json.loads(detail.getvalue())["attempts"]
    assert attempts[2]["changes"]["added"] == {"api_token": MASK}


def test_the_last_failed_attempt_of_a_sequence_retrying_is_retrying() -> None:
    seq = Pricing.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    history.write(
        history.Entry(
            sequence_id=seq.id, step_index=0, step="Quote", epoch=record.epoch, attempt=1,
            outcome="failed", started_at=timezone.now(), error="RuntimeError: later",
        )
    )  # fmt: skip
    assert [h["outcome"] for h in seq.history()] == ["failed"]
    SequenceRecord.objects.filter(pk=seq.id).update(status="retrying")  # RQ runs it again
    assert [h["outcome"] for h in seq.history()] == ["retrying"]
