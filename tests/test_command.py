"""`manage.py sequence`: every steering subcommand, its output, JSON and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from sequence.declare.masking import MASK
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.ops.retention import parse_age
from testproject.testapp.sequences import Compensating, ThreeSteps

from .conftest import ROOT
from .lifecycle_support import job_status, make_record, run_jobs


def sequence(*args: str) -> tuple[str, str]:
    """Run ``manage.py sequence ARGS`` in this process; return (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command("sequence", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failing(*args: str) -> str:
    """The CommandError message of ``manage.py sequence ARGS``, then what it wrote to stderr."""
    err = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("sequence", *args, stdout=StringIO(), stderr=err)
    return f"{caught.value}\n{err.getvalue()}".strip()


def in_shell(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py sequence ARGS`` as a person would, against the test database."""
    env = {**os.environ, "SEQUENCE_DB_NAME": str(connection.settings_dict["NAME"])}
    return subprocess.run(
        [sys.executable, "manage.py", "sequence", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- list ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_prints_a_table_newest_first():
    older = make_record(status=Status.COMPLETED, step_index=3)
    newer = make_record(status=Status.RUNNING, step_index=1, attempt=2)
    out, _ = sequence("list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "STATUS", "PROGRESS", "CURRENT", "STEP", "ATTEMPT", "CREATED", "DURATION",
    ]  # fmt: skip
    assert lines[1].split()[:6] == [str(newer.pk), "testapp.ThreeSteps", "running", "1/3", "B", "2"]
    assert lines[2].split()[:5] == [str(older.pk), "testapp.ThreeSteps", "completed", "3/3", "-"]


@pytest.mark.django_db
def test_list_filters_by_status_and_name_and_limits():
    failed = make_record(status=Status.FAILED)
    make_record(status=Status.PENDING)
    other = make_record(name="testapp.Arithmetic", plan=["Double"], status=Status.FAILED)
    out, _ = sequence("list", "--status", "failed", "--json")
    assert {row["id"] for row in json.loads(out)} == {failed.pk, other.pk}
    out, _ = sequence("list", "--status", "failed", "--name", "testapp.Arithmetic", "--json")
    assert [row["id"] for row in json.loads(out)] == [other.pk]
    out, _ = sequence("list", "--status", "failed", "--status", "pending", "--limit", "2", "--json")
    assert len(json.loads(out)) == 2
    out, _ = sequence("list", "--name", "nothing.Here")
    assert out.strip() == "No sequences match."


@pytest.mark.django_db
def test_list_json_is_machine_readable():
    record = make_record(status=Status.RUNNING, step_index=1, attempt=1, data={"secret": "x"})
    out, _ = sequence("list", "--json")
    [row] = json.loads(out)
    assert row["id"] == record.pk
    assert row["status"] == "running"
    assert row["progress"] == {"done": 1, "total": 3}
    assert row["current_step"] == "B"
    assert "data" not in row
    assert row["created_at"].startswith(str(timezone.now().year))


@pytest.mark.django_db
def test_list_arguments_are_validated_with_clear_messages():
    assert "invalid choice: 'done'" in failing("list", "--status", "done")
    assert "'0' is not a limit; give a whole number from 1 to 10000" in failing(
        "list", "--limit", "0"
    )
    assert "'many' is not a limit" in failing("list", "--limit", "many")


# -- show -------------------------------------------------------------------------------------


def _failed_record() -> SequenceRecord:
    record = make_record(
        name="testapp.Compensating",
        plan=["Undo", "Broken", "C"],
        status=Status.FAILED,
        step_index=1,
        attempt=2,
        key="order-7",
        error="ValueError: password=hunter22 was refused",
        data={"name": "Ada", "password": "hunter22"},
        finished_at=timezone.now(),
    )
    now = timezone.now()
    for attempt, outcome, error in ((1, "succeeded", ""), (1, "failed", "ValueError: nope")):
        StepAttempt.objects.create(
            sequence=record, step="Undo" if outcome == "succeeded" else "Broken",
            step_index=0 if outcome == "succeeded" else 1, epoch=0, attempt=attempt,
            outcome=outcome, started_at=now, finished_at=now + timedelta(milliseconds=250),
            worker="host:1", error=error, traceback="Traceback: hunter22" if error else "",
        )  # fmt: skip
    return record


@pytest.mark.django_db
def test_show_prints_status_plan_with_the_current_step_data_and_attempt_errors():
    record = _failed_record()
    out, _ = sequence("show", str(record.pk))
    assert f"Sequence #{record.pk} testapp.Compensating" in out
    assert "  status       failed" in out
    assert "  progress     1/3 steps" in out
    assert "  key          order-7" in out
    assert f"  error        ValueError: password={MASK} was refused" in out
    assert "     1. Undo                           done" in out
    assert "  >  2. Broken                         <- failed" in out
    assert "     3. C" in out
    assert f'"password": "{MASK}"' in out
    assert '"name": "Ada"' in out
    assert "Attempts (2)" in out
    assert "ValueError: nope" in out
    assert "hunter22" not in out
    assert "Traceback" not in out
    out, _ = sequence("show", str(record.pk), "--tracebacks")
    assert f"| Traceback: {MASK}" in out


@pytest.mark.django_db
def test_show_json_has_the_plan_data_and_attempts_masked():
    record = _failed_record()
    out, _ = sequence("show", str(record.pk), "--json")
    shown = json.loads(out)
    assert shown["status"] == "failed"
    assert shown["plan"] == [
        {"index": 0, "name": "Undo", "state": "done"},
        {"index": 1, "name": "Broken", "state": "current"},
        {"index": 2, "name": "C", "state": "next"},
    ]
    assert shown["data"] == {"name": "Ada", "password": MASK}
    assert [a["outcome"] for a in shown["attempts"]] == ["succeeded", "failed"]
    assert shown["attempts"][1]["traceback"] == f"Traceback: {MASK}"
    assert shown["attempts"][1]["duration_seconds"] == 0.25
    assert "hunter22" not in out


@pytest.mark.django_db
def test_show_refuses_a_missing_or_malformed_id():
    assert failing("show", "424242") == "No sequence has the id 424242."
    assert "'abc' is not a sequence id" in failing("show", "abc")
    assert "'-3' is not a sequence id" in failing("show", "-3")


# -- start ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_start_saves_the_sequence_and_queues_its_first_step():
    out, _ = sequence("start", "testapp.ThreeSteps", "--data", '{"user": "ada"}')
    record = SequenceRecord.objects.get()
    assert out.strip() == f"Started sequence #{record.pk} testapp.ThreeSteps."
    assert record.data == {"user": "ada"}
    assert job_status(record) == "queued"
    run_jobs()
    record.refresh_from_db()
    assert record.status == Status.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_start_with_a_key_twice_returns_the_first_sequence(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('{"n": 1}')
    first, _ = sequence(
        "start", "testapp.ThreeSteps", "--data", f"@{data}", "--key", "k-1", "--json"
    )
    again, _ = sequence("start", "testapp.ThreeSteps", "--key", "k-1", "--json")
    first_row, again_row = json.loads(first), json.loads(again)
    assert first_row["existing"] is False
    assert again_row["existing"] is True
    assert again_row["id"] == first_row["id"]
    assert SequenceRecord.objects.count() == 1
    out, _ = sequence("start", "testapp.ThreeSteps", "--key", "k-1")
    assert f"#{first_row['id']} testapp.ThreeSteps already started with key 'k-1'" in out


@pytest.mark.django_db
def test_start_refuses_unknown_names_and_bad_data_with_clear_messages():
    assert "No sequence is registered as 'shop.Nope'" in failing("start", "shop.Nope")
    assert "the JSON is not valid: Expecting property name" in failing(
        "start", "testapp.ThreeSteps", "--data", "{oops"
    )
    assert "the JSON is list [1, 2]; give an object" in failing(
        "start", "testapp.ThreeSteps", "--data", "[1, 2]"
    )
    assert "cannot read 'missing.json'" in failing(
        "start", "testapp.ThreeSteps", "--data", "@missing.json"
    )
    message = failing("start", "testapp.ThreeSteps", "--data", '{"ratio": NaN}')
    assert message.startswith("Cannot start testapp.ThreeSteps: data['ratio'] is nan")
    assert SequenceRecord.objects.count() == 0


# -- pause, resume, cancel, retry ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_pause_resume_and_cancel_report_each_sequence():
    a, b = ThreeSteps.start({}), ThreeSteps.start({})
    out, _ = sequence("pause", str(a.id), str(b.id))
    assert out.splitlines() == [
        f"#{a.id} paused: pending -> paused",
        f"#{b.id} paused: pending -> paused",
    ]
    out, _ = sequence("pause", str(a.id))
    assert out.strip() == f"#{a.id} unchanged: already paused"
    out, _ = sequence("resume", str(a.id), "--json")
    assert json.loads(out) == [{"id": a.id, "ok": True, "changed": True, "status": "pending"}]
    out, _ = sequence("cancel", str(a.id), str(b.id))
    assert out.splitlines() == [
        f"#{a.id} canceled: pending -> canceled",
        f"#{b.id} canceled: paused -> canceled",
    ]


@pytest.mark.django_db(transaction=True)
def test_a_request_that_does_not_apply_fails_the_command_after_doing_the_rest():
    live = ThreeSteps.start({})
    done = make_record(status=Status.COMPLETED, step_index=3)
    out = StringIO()
    err = StringIO()
    with pytest.raises(CommandError, match=r"2 of 3 sequences could not be paused\."):
        call_command(
            "sequence", "pause", str(done.pk), str(live.id), "999999", stdout=out, stderr=err
        )
    assert out.getvalue().strip() == f"#{live.id} paused: pending -> paused"
    assert err.getvalue().splitlines() == [
        f"#{done.pk}: Cannot pause testapp.ThreeSteps #{done.pk}: it is completed; pause "
        "applies to a sequence that is pending, queued, retrying, running, sleeping, waiting.",
        "#999999: No sequence has the id 999999.",
    ]
    with pytest.raises(CommandError):
        call_command("sequence", "cancel", str(done.pk), "--json", stdout=(out := StringIO()))
    assert json.loads(out.getvalue())[0]["ok"] is False


@pytest.mark.django_db(transaction=True)
def test_retry_merges_corrections_and_the_sequence_finishes():
    seq = Compensating.start({})
    run_jobs()
    assert SequenceRecord.objects.get(pk=seq.id).status == Status.FAILED
    assert "the JSON is str 'x'; give an object" in failing("retry", str(seq.id), "--data", '"x"')
    assert "retry with force=True (--force" in failing(
        "retry", str(seq.id), "--data", '{"fixed": true}'
    )
    out, _ = sequence("retry", str(seq.id), "--data", '{"fixed": true}', "--force")
    assert out.strip() == f"#{seq.id} retried: failed -> pending"
    run_jobs()
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == Status.COMPLETED
    assert record.data["fixed"] is True
    assert "it is completed; retry applies to a sequence that is failed" in failing(
        "retry", str(seq.id)
    )


# -- recover and prune --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_recover_prints_what_it_did_and_json_for_programs():
    out, _ = sequence("recover")
    assert out.startswith("Recovery sweep:")
    out, _ = sequence("recover", "--json")
    assert set(json.loads(out)) >= {"redispatched", "failed"}


def _finished(days_ago: float, status: str = Status.COMPLETED) -> SequenceRecord:
    record = make_record(status=status, step_index=3)
    StepAttempt.objects.create(
        sequence=record, step="A", step_index=0, epoch=0, attempt=1, outcome="succeeded",
        started_at=timezone.now(), finished_at=timezone.now(),
    )  # fmt: skip
    SequenceRecord.objects.filter(pk=record.pk).update(
        finished_at=timezone.now() - timedelta(days=days_ago)
    )
    return record


@pytest.mark.django_db(transaction=True)
def test_prune_deletes_old_finished_sequences_and_their_history_in_batches():
    old = [_finished(40), _finished(31, Status.FAILED), _finished(35, Status.CANCELED)]
    recent = _finished(5)
    stuck = make_record(status=Status.PAUSED)
    SequenceRecord.objects.filter(pk=stuck.pk).update(
        created_at=timezone.now() - timedelta(days=90)
    )
    out, _ = sequence("prune", "--older-than", "30d", "--dry-run")
    assert out.strip() == "Would delete 3 sequences and 3 attempts finished more than 30 days ago."
    assert SequenceRecord.objects.count() == 5
    out, _ = sequence("prune", "--older-than", "30d", "--batch-size", "2", "--json")
    assert json.loads(out) == {
        "sequences": 3,
        "attempts": 3,
        "batches": 2,
        "jobs": 0,
        "dry_run": False,
    }
    remaining = set(SequenceRecord.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, stuck.pk}
    assert not StepAttempt.objects.filter(sequence_id__in=[r.pk for r in old]).exists()
    out, _ = sequence("prune", "--older-than", "30d")
    assert out.strip() == (
        "Deleted 0 sequences and 0 attempts in 0 batches, and 0 jobs left in Redis."
    )


@pytest.mark.django_db
def test_prune_needs_an_age_it_can_read():
    assert "the following arguments are required: --older-than" in failing("prune")
    assert "'30' is not an age" in failing("prune", "--older-than", "30")
    assert "'1 month' is not an age" in failing("prune", "--older-than", "1 month")
    assert "'0' is not a batch size" in failing("prune", "--older-than", "1d", "--batch-size", "0")
    assert parse_age("2w") == timedelta(days=14)
    assert parse_age("90m") == timedelta(minutes=90)


# -- exit status from a shell ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_exit_status_is_zero_on_success_one_on_failure_and_two_on_bad_usage():
    done = make_record(status=Status.COMPLETED, step_index=3)
    ok = in_shell("list", "--json")
    assert ok.returncode == 0, ok.stderr
    assert [row["id"] for row in json.loads(ok.stdout)] == [done.pk]
    refused = in_shell("pause", str(done.pk))
    assert refused.returncode == 1
    assert "CommandError: 1 of 1 sequences could not be paused." in refused.stderr
    assert f"Cannot pause testapp.ThreeSteps #{done.pk}: it is completed" in refused.stderr
    usage = in_shell("show", "abc")
    assert usage.returncode == 2
    assert "usage: manage.py sequence show" in usage.stderr
    assert "'abc' is not a sequence id" in usage.stderr
    missing = in_shell()
    assert missing.returncode != 0
    assert "SUBCOMMAND" in missing.stderr
