"""The admin: the list, the detail page, the actions and their permissions."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sequence.declare.masking import MASK
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.present.paginator import EstimatedCountPaginator
from testproject.testapp.models import Ledger
from testproject.testapp.sequences import BadOutputSequence, Compensating, ThreeSteps

from .lifecycle_support import job_status, make_record, make_user, queued_jobs, run_jobs

LIST_URL = reverse("admin:sequence_sequencerecord_changelist")


def detail_url(pk: int) -> str:
    return reverse("admin:sequence_sequencerecord_change", args=[pk])


def action_url(pk: int, action: str) -> str:
    return reverse("admin:sequence_sequencerecord_action", args=[pk, action])


def retry_url(pk: int) -> str:
    return reverse("admin:sequence_sequencerecord_retry", args=[pk])


def text_of(response) -> str:
    return str(response.content.decode())


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# -- the list ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_shows_status_badge_progress_bar_current_step_and_timings(admin_client):
    make_record(status=Status.RUNNING, step_index=1, attempt=2)
    done = make_record(
        name="testapp.Arithmetic",
        plan=["Double", "add_one", "remember"],
        status=Status.COMPLETED,
        step_index=3,
    )
    SequenceRecord.objects.filter(pk=done.pk).update(
        created_at=timezone.now() - timedelta(seconds=75), finished_at=timezone.now()
    )
    html = text_of(admin_client.get(LIST_URL))
    assert '<span class="seq-badge seq-status-running">Running</span>' in html
    assert '<span class="seq-badge seq-status-completed">Completed</span>' in html
    assert 'aria-valuenow="1"' in html
    assert 'title="1 of 3 steps done"' in html
    assert '<span class="seq-progress-fill" style="width: 33%"></span>' in html
    assert '<span class="seq-progress-fill" style="width: 100%"></span>' in html
    assert '<td class="field-current_step_name">B</td>' in html
    assert '<td class="field-attempts">2</td>' in html
    assert '<td class="field-duration">1m 15s</td>' in html
    assert "2 sequences" in html


@pytest.mark.django_db
def test_list_filters_by_status_and_by_name(admin_client):
    failed = make_record(status=Status.FAILED, step_index=1)
    make_record(status=Status.PENDING)
    other = make_record(name="testapp.Arithmetic", plan=["Double"], status=Status.FAILED)
    response = admin_client.get(LIST_URL, {"status__exact": "failed"})
    assert {r.pk for r in response.context["cl"].result_list} == {failed.pk, other.pk}
    response = admin_client.get(LIST_URL, {"status__exact": "failed", "name": "testapp.Arithmetic"})
    assert [r.pk for r in response.context["cl"].result_list] == [other.pk]
    html = text_of(admin_client.get(LIST_URL))
    # The name filter offers the registered sequences without querying the table.
    assert "?name=testapp.ThreeSteps" in html


@pytest.mark.django_db
def test_search_finds_a_sequence_by_id_or_by_start_key(admin_client):
    keyed = make_record(key="contact-42")
    plain = make_record()
    found = admin_client.get(LIST_URL, {"q": "contact-42"}).context["cl"].result_list
    assert [r.pk for r in found] == [keyed.pk]
    found = admin_client.get(LIST_URL, {"q": str(plain.pk)}).context["cl"].result_list
    assert [r.pk for r in found] == [plain.pk]
    found = admin_client.get(LIST_URL, {"q": f"#{plain.pk}"}).context["cl"].result_list
    assert [r.pk for r in found] == [plain.pk]
    assert list(admin_client.get(LIST_URL, {"q": "nothing"}).context["cl"].result_list) == []


def _changelist_queries(client) -> list[str]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE sequence_record")  # as autovacuum would have
    with CaptureQueriesContext(connection) as captured:
        response = client.get(LIST_URL)
    assert response.status_code == 200
    return [q["sql"] for q in captured.captured_queries]


@pytest.mark.django_db
def test_changelist_query_count_is_pinned_and_does_not_grow_with_rows(admin_client):
    for i in range(3):
        make_record(status=Status.COMPLETED, step_index=3, data={"blob": "x" * 1000, "i": i})
    few = _changelist_queries(admin_client)
    for i in range(60):
        make_record(status=Status.FAILED, step_index=1, error="boom", data={"i": i})
    many = _changelist_queries(admin_client)
    assert len(many) == len(few)
    # session, user, the health counts (the rows in flight by group, the last hour's
    # finished ones) and worker rows (sequence.ops.health), count (PostgreSQL: the pg_class
    # estimate first), one page of rows.
    expected = 8 if connection.vendor == "postgresql" else 7
    assert len(many) == expected, "\n".join(many)
    page = [sql for sql in many if "sequence_record" in sql and "LIMIT" in sql.upper()]
    assert len(page) == 1
    # The list never loads the data or the error of its rows.
    assert '"sequence_record"."data"' not in page[0]
    assert '"sequence_record"."error"' not in page[0]
    assert "ORDER BY" in page[0]


@pytest.mark.django_db
def test_changelist_filtered_by_status_uses_one_count_and_one_page_query(admin_client):
    for _ in range(5):
        make_record(status=Status.FAILED)
    with CaptureQueriesContext(connection) as captured:
        admin_client.get(LIST_URL, {"status__exact": "failed"})
    # The paginator's count, beside the health summary's (tests/test_health.py pins them).
    counts = [q["sql"] for q in captured.captured_queries if '"__count"' in q["sql"]]
    assert len(counts) == 1


@pytest.mark.django_db
def test_list_does_not_count_the_whole_table_beside_the_filtered_count(admin_client):
    make_record(status=Status.FAILED)
    response = admin_client.get(LIST_URL, {"status__exact": "failed"})
    assert response.context["cl"].full_result_count is None


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_class estimates are PostgreSQL's")
def test_large_unfiltered_list_shows_an_estimated_count_on_postgresql(admin_client, monkeypatch):
    for _ in range(3):
        make_record()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE sequence_record")
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 1)
    html = text_of(admin_client.get(LIST_URL))
    assert re.search(r"about \d+</span> sequences", html)


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN estimates are PostgreSQL's")
def test_a_filter_the_planner_expects_to_match_many_rows_is_not_counted(admin_client, monkeypatch):
    for _ in range(3):
        make_record(status=Status.FAILED)
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 1)
    with CaptureQueriesContext(connection) as captured:
        html = text_of(admin_client.get(LIST_URL, {"status__exact": "failed"}))
    assert re.search(r"about \d+</span> sequence", html)
    # The health summary above the table counts (tests/test_health.py pins it); the
    # paginator counts nothing.
    assert not [q for q in captured.captured_queries if '"__count"' in q["sql"]]


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="statement_timeout is PostgreSQL's")
def test_slow_filtered_count_falls_back_to_the_planner_estimate(monkeypatch):
    from django.db.models.expressions import RawSQL

    make_record()
    slow = SequenceRecord.objects.filter(
        pk__in=RawSQL("SELECT id FROM sequence_record WHERE pg_sleep(0.5) IS NOT NULL", [])
    )
    monkeypatch.setattr(EstimatedCountPaginator, "count_timeout_ms", 50)
    paginator = EstimatedCountPaginator(slow, 50)
    assert paginator.count >= 0
    assert paginator.estimated
    # The timeout does not outlive the count.
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


# -- the detail page ---------------------------------------------------------------------


def _failed_record_with_history() -> SequenceRecord:
    now = timezone.now()
    record = make_record(
        name="testapp.Compensating",
        plan=["Undo", "Broken", "C"],
        status=Status.FAILED,
        step_index=1,
        attempt=2,
        error="ValueError: broken step",
        data={
            "name": "Ada",
            "trail": ["Undo"],
            "password": "hunter22",
            "nested": {"api_key": "k-123456"},
        },
        finished_at=now,
    )
    SequenceRecord.objects.filter(pk=record.pk).update(created_at=now - timedelta(seconds=10))
    record.refresh_from_db()
    rows = [
        ("Undo", 0, 1, "succeeded", 9.0, 8.0, "", ""),
        ("Broken", 1, 1, "failed", 7.0, 6.5, "ValueError: broken step", "Traceback: one"),
        (
            "Broken",
            1,
            2,
            "failed",
            5.0,
            4.0,
            "ValueError: password=hunter22 rejected",
            "Traceback: hunter22",
        ),
        ("Undo", 0, 1, "compensated", 3.0, 2.9, "", ""),
    ]
    for step, index, attempt, outcome, began, ended, error, tb in rows:
        StepAttempt.objects.create(
            sequence=record, step=step, step_index=index, epoch=index, attempt=attempt,
            outcome=outcome, started_at=now - timedelta(seconds=began),
            finished_at=now - timedelta(seconds=ended), worker="host:1", error=error, traceback=tb,
        )  # fmt: skip
    return record


@pytest.mark.django_db
def test_detail_shows_data_timeline_plan_and_each_attempts_error(admin_client):
    record = _failed_record_with_history()
    response = admin_client.get(detail_url(record.pk))
    html = text_of(response)
    assert response.status_code == 200
    assert '<span class="seq-badge seq-status-failed" data-testid="status">Failed</span>' in html
    # Readable JSON, sorted and indented.
    assert "&quot;name&quot;: &quot;Ada&quot;" in html
    assert "\n  &quot;trail&quot;: [\n    &quot;Undo&quot;\n  ]" in html
    # One bar per attempt along the axis, coloured by outcome.
    bars = re.findall(
        r'class="seq-bar seq-outcome-([\w-]+)" style="left: ([\d.]+)%; width: ([\d.]+)%"', html
    )
    assert [b[0] for b in bars] == ["succeeded", "failed", "failed", "compensated"]
    lefts = [float(b[1]) for b in bars]
    assert lefts == sorted(lefts)
    # The axis runs from the first attempt (9 s ago; created 1 s before) to the end.
    assert lefts[0] == 0
    assert float(bars[0][2]) == pytest.approx(100 / 9, abs=0.1)  # 1 s of a 9 s axis
    assert lefts[1] == pytest.approx(200 / 9, abs=0.1)
    assert "(9.0s, after 1.0s in the queue)" in html
    assert html.count('class="seq-tick"') == 5
    # The plan with the current step marked.
    assert re.search(r'<li class="seq-plan-done">\s*<span class="seq-plan-name">Undo</span>', html)
    assert re.search(
        r'<li class="seq-plan-current" aria-current="step">\s*<span class="seq-plan-name">Broken</span>',
        html,
    )
    assert re.search(r'<li class="seq-plan-next">\s*<span class="seq-plan-name">C</span>', html)
    # Each attempt's error and traceback.
    assert '<code class="seq-attempt-error">ValueError: broken step</code>' in html
    assert "Traceback: one" in html
    assert "Compensated" in html


@pytest.mark.django_db
def test_secrets_are_masked_in_data_errors_and_tracebacks_on_the_detail_page(admin_client):
    record = _failed_record_with_history()
    html = text_of(admin_client.get(detail_url(record.pk)))
    assert "hunter22" not in html
    assert "k-123456" not in html
    assert f"&quot;password&quot;: &quot;{MASK}&quot;" in html
    assert f"&quot;api_key&quot;: &quot;{MASK}&quot;" in html
    assert f"ValueError: password={MASK} rejected" in html
    assert f"Traceback: {MASK}" in html
    # The stored data keeps the real values: steps need them.
    record.refresh_from_db()
    assert record.data["password"] == "hunter22"


@pytest.mark.django_db
def test_everything_a_user_stored_is_escaped(admin_client):
    evil = "<script>alert('x')</script>"
    record = make_record(
        key=evil,
        status=Status.FAILED,
        error=f"ValueError: {evil}",
        data={evil: evil, "list": [evil]},
        version=evil,
    )
    StepAttempt.objects.create(
        sequence=record, step=evil, step_index=0, epoch=0, attempt=1, outcome="failed",
        started_at=timezone.now(), finished_at=timezone.now(), worker=evil, error=evil, traceback=evil,
    )  # fmt: skip
    for url in (detail_url(record.pk), LIST_URL, retry_url(record.pk)):
        html = text_of(admin_client.get(url))
        assert "<script>alert" not in html, url
    html = text_of(admin_client.get(detail_url(record.pk)))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


@pytest.mark.django_db
def test_detail_of_a_running_sequence_draws_the_step_in_flight(admin_client):
    record = make_record(
        status=Status.RUNNING, step_index=1, attempt=1, claim_token="t" * 32,
        claimed_by="host:9", claimed_at=timezone.now() - timedelta(seconds=2),
    )  # fmt: skip
    html = text_of(admin_client.get(detail_url(record.pk)))
    assert 'data-outcome="in-flight"' in html
    assert "2. B · try 1" in html


@pytest.mark.django_db
def test_detail_of_an_unknown_or_malformed_id_is_not_found(admin_client):
    assert admin_client.get(detail_url(999999)).status_code == 404
    assert admin_client.get("/admin/sequence/sequencerecord/abc/change/").status_code == 404


@pytest.mark.django_db
def test_sequences_cannot_be_added_or_deleted_in_the_admin(admin_client):
    record = make_record(status=Status.COMPLETED, step_index=3)
    assert admin_client.get(reverse("admin:sequence_sequencerecord_add")).status_code == 403
    delete = reverse("admin:sequence_sequencerecord_delete", args=[record.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert SequenceRecord.objects.filter(pk=record.pk).exists()


# -- permissions ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_view_only_user_sees_sequences_but_no_actions(client):
    client.force_login(make_user("viewer", "view"))
    record = make_record(status=Status.RUNNING)
    html = text_of(client.get(LIST_URL))
    assert "seq-status-running" in html
    assert 'name="action"' not in html  # no action dropdown
    html = text_of(client.get(detail_url(record.pk)))
    assert "seq-action-pause" not in html
    assert "changing it needs the change permission" in html


@pytest.mark.django_db(transaction=True)
def test_actions_need_the_change_permission(client):
    client.force_login(make_user("viewer", "view"))
    record = make_record(status=Status.RUNNING)
    assert client.post(action_url(record.pk, "pause")).status_code == 403
    assert client.get(retry_url(record.pk)).status_code == 403
    response = client.post(
        LIST_URL, {"action": "pause_selected", "_selected_action": [record.pk]}, follow=True
    )
    assert response.status_code == 200
    record.refresh_from_db()
    assert record.status == Status.RUNNING


@pytest.mark.django_db
def test_a_user_without_view_permission_cannot_open_a_sequence(client):
    client.force_login(make_user("nobody"))
    record = make_record()
    assert client.get(detail_url(record.pk)).status_code == 403
    assert client.get(LIST_URL).status_code == 403


@pytest.mark.django_db
def test_actions_are_post_only(admin_client):
    record = make_record(status=Status.RUNNING)
    assert admin_client.get(action_url(record.pk, "pause")).status_code == 405
    assert admin_client.post(action_url(record.pk, "explode")).status_code == 403


# -- actions -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_pause_and_resume_from_the_detail_page_with_the_change_permission(client):
    client.force_login(make_user("operator", "view", "change"))
    seq = ThreeSteps.start({})
    html = text_of(client.get(detail_url(seq.id)))
    assert "seq-action-pause" in html
    assert "seq-action-resume" not in html

    response = client.post(action_url(seq.id, "pause"), follow=True)
    assert messages_of(response) == [f"Paused testapp.ThreeSteps #{seq.id}: it is now paused."]
    assert (
        '<span class="seq-badge seq-status-paused" data-testid="status">Paused</span>'
        in text_of(response)
    )
    assert "seq-action-resume" in text_of(response)

    response = client.post(action_url(seq.id, "pause"), follow=True)
    assert messages_of(response) == [
        f"testapp.ThreeSteps #{seq.id} is already paused; nothing changed."
    ]

    response = client.post(action_url(seq.id, "resume"), follow=True)
    assert messages_of(response) == [f"Resumed testapp.ThreeSteps #{seq.id}: it is now pending."]
    record = SequenceRecord.objects.get(pk=seq.id)
    assert job_status(record) == "queued"  # the next step, queued once under the new epoch
    run_jobs()
    record.refresh_from_db()
    assert record.status == Status.COMPLETED
    assert Ledger.objects.filter(sequence_id=seq.id).count() == 3
    history = reverse("admin:sequence_sequencerecord_history", args=[seq.id])
    assert "Paused" in text_of(client.get(history))


@pytest.mark.django_db(transaction=True)
def test_an_action_that_does_not_apply_says_why(admin_client):
    record = make_record(status=Status.COMPLETED, step_index=3)
    response = admin_client.post(action_url(record.pk, "pause"), follow=True)
    assert messages_of(response) == [
        f"Cannot pause testapp.ThreeSteps #{record.pk}: it is completed; pause applies to a "
        "sequence that is pending, queued, retrying, running, sleeping, waiting."
    ]
    record.refresh_from_db()
    assert record.status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_list_actions_pause_and_cancel_go_through_the_transitions(admin_client):
    first, second = ThreeSteps.start({}), ThreeSteps.start({})
    done = make_record(status=Status.COMPLETED, step_index=3)
    response = admin_client.post(
        LIST_URL,
        {"action": "pause_selected", "_selected_action": [first.id, second.id, done.pk]},
        follow=True,
    )
    assert messages_of(response) == [
        f"Paused 2 sequences: #{first.id}, #{second.id}.",
        f"Cannot pause testapp.ThreeSteps #{done.pk}: it is completed; pause applies to a "
        "sequence that is pending, queued, retrying, running, sleeping, waiting.",
    ]
    response = admin_client.post(
        LIST_URL, {"action": "cancel_selected", "_selected_action": [first.id]}, follow=True
    )
    assert messages_of(response) == [f"Canceled 1 sequence: #{first.id}."]
    record = SequenceRecord.objects.get(pk=first.id)
    assert record.status == Status.CANCELED
    assert SequenceRecord.objects.get(pk=second.id).status == Status.PAUSED


@pytest.mark.django_db(transaction=True)
def test_cancel_from_the_admin_deletes_the_queued_job_from_rq(admin_client):
    seq = ThreeSteps.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    assert job_status(record) == "queued"
    admin_client.post(action_url(seq.id, "cancel"))
    record.refresh_from_db()
    assert record.status == Status.CANCELED
    assert job_status(record) is None
    assert queued_jobs() == []


@pytest.mark.django_db(transaction=True)
def test_retry_with_edited_data_keeps_masked_secrets_and_finishes_the_sequence(admin_client):
    seq = Compensating.start({"password": "hunter22", "note": "first"})
    run_jobs()  # Broken fails twice: failed
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == Status.FAILED

    form = admin_client.get(retry_url(seq.id))
    shown = form.context["form"].initial["sequence_data"]
    assert "hunter22" not in text_of(form)
    assert json.loads(shown)["password"] == MASK
    edited = json.loads(shown)
    edited["fixed"] = True
    edited["note"] = "second"
    del edited["trail"]
    response = admin_client.post(
        retry_url(seq.id),
        {
            "sequence_data": json.dumps(edited),
            "epoch": form.context["form"].initial["epoch"],
            "force": "on",  # its compensations ran
        },
        follow=True,
    )
    assert messages_of(response) == [
        f"Retried testapp.Compensating #{seq.id} with the edited data: it is now pending."
    ]
    record.refresh_from_db()
    assert record.data == {"password": "hunter22", "note": "second", "fixed": True}
    run_jobs()
    record.refresh_from_db()
    assert record.status == Status.COMPLETED
    assert record.data["trail"] == ["C"]


@pytest.mark.django_db(transaction=True)
def test_retry_form_rejects_bad_json_and_a_stale_copy(admin_client):
    seq = Compensating.start({})
    run_jobs()
    record = SequenceRecord.objects.get(pk=seq.id)
    epoch = record.epoch
    response = admin_client.post(retry_url(seq.id), {"sequence_data": "{oops", "epoch": epoch})
    assert "This is not valid JSON" in text_of(response)
    response = admin_client.post(retry_url(seq.id), {"sequence_data": "[1, 2]", "epoch": epoch})
    assert "Give a JSON object" in text_of(response)
    response = admin_client.post(retry_url(seq.id), {"sequence_data": "{}", "epoch": epoch - 1})
    assert "it changed since you loaded it" in text_of(response)
    record.refresh_from_db()
    assert record.status == Status.FAILED


@pytest.mark.django_db(transaction=True)
def test_retry_action_on_the_list_reruns_the_failed_step(admin_client):
    seq = BadOutputSequence.start({})
    run_jobs()
    response = admin_client.post(
        LIST_URL, {"action": "retry_selected", "_selected_action": [seq.id]}, follow=True
    )
    assert messages_of(response) == [f"Retried 1 sequence: #{seq.id}."]
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == Status.PENDING
    assert record.attempt == 0
    assert job_status(record) == "queued"


@pytest.mark.django_db
def test_retry_with_edited_data_from_the_list_takes_exactly_one_sequence(admin_client):
    a, b = make_record(status=Status.FAILED), make_record(status=Status.FAILED)
    response = admin_client.post(
        LIST_URL, {"action": "edit_and_retry", "_selected_action": [a.pk, b.pk]}, follow=True
    )
    assert messages_of(response) == ["Select exactly one sequence to retry with edited data."]
    response = admin_client.post(LIST_URL, {"action": "edit_and_retry", "_selected_action": [a.pk]})
    assert response.status_code == 302
    assert response["Location"] == retry_url(a.pk)


@pytest.mark.django_db
def test_retry_form_for_a_sequence_that_has_not_failed_sends_you_back(admin_client):
    record = make_record(status=Status.RUNNING)
    response = admin_client.get(retry_url(record.pk), follow=True)
    assert messages_of(response) == [
        f"testapp.ThreeSteps #{record.pk} is running; only a failed sequence can be retried."
    ]


@pytest.mark.django_db(transaction=True)
def test_retry_action_on_the_list_leaves_a_compensated_sequence_alone_and_says_why(admin_client):
    seq = Compensating.start({})
    run_jobs()  # Broken fails twice; Undo is compensated
    response = admin_client.post(
        LIST_URL, {"action": "retry_selected", "_selected_action": [seq.id]}, follow=True
    )
    assert any("its compensations ran" in m for m in messages_of(response))
    assert SequenceRecord.objects.get(pk=seq.id).status == Status.FAILED
