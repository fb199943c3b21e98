"""What the admin and `manage.py sequence show` tell of a ForEach's elements."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models import TextField, Value
from django.db.models.functions import Cast, Concat
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from sequence.engine.states import Status
from sequence.models import ItemStatus, SequenceItem, SequenceRecord
from testproject.testapp.sequences import Squares, UnluckySquares

from .conftest import wait_for
from .lifecycle_support import make_record, run_jobs

LIST_URL = reverse("admin:sequence_sequencerecord_changelist")
FOREACH = 'ForEach {"concurrency": 1, "into": "squares", "key": "numbers", "step": "Square"}'


def detail_url(pk: int) -> str:
    return reverse("admin:sequence_sequencerecord_change", args=[pk])


def show(*args: str) -> str:
    out = StringIO()
    call_command("sequence", "show", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def text(html: str) -> str:
    """The page's words: tags gone, runs of spaces made one."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def unlucky() -> int:
    """A failed ForEach run on a real worker: elements 0 and 1 done then compensated,
    element 2 failed for good, element 3 never started."""
    seq = UnluckySquares.start({"numbers": [1, 2, 13, 4]})

    def failed() -> bool:
        run_jobs()
        seq.refresh()
        return seq.status == Status.FAILED

    wait_for(failed, timeout=30, message="the ForEach to fail")
    return seq.id


def many_failed(failures: int, total: int = 100) -> SequenceRecord:
    """A failed sequence whose ForEach had ``failures`` elements fail for good."""
    record = make_record(
        name="testapp.Squares", plan=["A", FOREACH, "B"], status=Status.FAILED, step_index=1,
        data={"numbers": list(range(total)), "password": "hunter2-secret"},
    )  # fmt: skip
    SequenceItem.objects.bulk_create(
        SequenceItem(sequence=record, step_index=1, index=i, attempt=3, status=ItemStatus.DONE)
        for i in range(total)
    )
    SequenceItem.objects.filter(sequence=record, index__lt=failures).update(
        status=ItemStatus.FAILED,
        error=Concat(
            Value("boom "),
            Cast("index", TextField()),
            Value(" with hunter2-secret"),
            output_field=TextField(),
        ),
    )
    return record


# -- the admin ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_detail_shows_the_element_bar_the_failed_element_and_the_compensated_ones(
    admin_client,
):
    pk = unlucky()
    page = text(admin_client.get(detail_url(pk)).content.decode())
    assert "2 of 4 elements done, 1 failed, 2 compensated" in page
    assert "1 element failed" in page
    assert "unlucky" in page
    assert "2 elements compensated: 0-1." in page


@pytest.mark.django_db
def test_admin_detail_lists_at_most_fifty_failed_elements_with_their_errors_masked(admin_client):
    record = many_failed(60)
    response = admin_client.get(detail_url(record.pk))
    html = response.content.decode()
    assert html.count('class="seq-failed-element"') == 50
    assert "boom 49" in html
    assert "boom 50 " not in html
    assert "10 more failed elements, not listed" in text(html)
    assert "hunter2-secret" not in html


@pytest.mark.django_db
def test_admin_detail_reads_the_elements_in_a_fixed_number_of_queries(admin_client):
    few = many_failed(2, total=10)
    lots = many_failed(60, total=2000)
    plain = make_record(status=Status.FAILED, step_index=1, error="boom")

    def queries(pk: int) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(detail_url(pk)).status_code == 200
        return len(captured.captured_queries)

    assert queries(lots.pk) == queries(few.pk)
    # The counts, then the failed elements: two queries more than a plan without a ForEach.
    assert queries(lots.pk) == queries(plain.pk) + 2


@pytest.mark.django_db
def test_admin_list_shows_the_elements_of_a_running_foreach_beside_its_steps(admin_client):
    make_record(
        name="testapp.Squares", plan=["A", FOREACH, "B"], status=Status.RUNNING,
        step_index=1, items_total=100, items_done=12,
    )  # fmt: skip
    make_record(status=Status.RUNNING, step_index=1)
    page = text(admin_client.get(LIST_URL).content.decode())
    assert "12/100 elements" in page
    assert page.count(" elements") == 1


# -- the command ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_show_prints_the_elements_done_the_failed_one_with_its_error_and_the_compensated():
    pk = unlucky()
    out = show(str(pk))
    assert re.search(r"elements\s+2/4 done, 1 failed, 2 compensated", out)
    assert "element 2 13, 1 attempts:" in out
    assert "unlucky" in out
    assert "compensated: 0-1" in out


@pytest.mark.django_db(transaction=True)
def test_show_json_has_an_items_object_with_the_counts_and_the_failures():
    pk = unlucky()
    items = json.loads(show(str(pk), "--json"))["items"]
    assert items["step_index"] == 1
    assert (items["total"], items["done"], items["failed"], items["compensated"]) == (4, 2, 1, 2)
    assert items["failures"] == [{"index": 2, "item": "13", "attempts": 1, "error": "unlucky"}]
    assert items["compensated_ranges"] == "0-1"
    assert items["more_failed"] == 0


@pytest.mark.django_db(transaction=True)
def test_show_json_of_a_sequence_without_a_foreach_has_no_items():
    seq = Squares.start({"numbers": [2]})
    run_jobs()
    seq.wait(5)
    items = json.loads(show(str(seq.id), "--json"))["items"]
    assert items["done"] == items["total"] == 1  # the last ForEach that ran
    plain = make_record(status=Status.RUNNING)
    assert json.loads(show(str(plain.pk), "--json"))["items"] is None


@pytest.mark.django_db
def test_show_lists_fifty_failed_elements_and_counts_the_rest():
    out = show(str(many_failed(60).pk))
    assert "elements     40/100 done, 60 failed" in out
    assert out.count("attempts:") == 50
    assert "...and 10 more failed, not listed" in out
    assert "hunter2-secret" not in out
