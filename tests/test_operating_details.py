"""What people read while operating: log lines, the timeline's marks, the attempt column,
and `sequence show | head`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from sequence.engine.states import Outcome, Status
from sequence.models import SequenceRecord, StepAttempt
from sequence.present import timeline
from testproject.testapp.sequences import Compensating, FlakySequence, ThreeSteps

from .conftest import ROOT
from .lifecycle_support import make_record, run_jobs
from .test_command import sequence


@pytest.mark.django_db(transaction=True)
def test_the_worker_logs_one_line_per_step_outcome_naming_sequence_step_and_attempt(caplog):
    seq = FlakySequence.start({"fail_times": 1})
    with caplog.at_level(logging.INFO, logger="sequence"):
        run_jobs()
    lines = [r.getMessage() for r in caplog.records if r.name == "sequence"]
    name = f"testapp.FlakySequence #{seq.id}"
    assert f"Sequence {name} step A (attempt 1) succeeded" in "\n".join(lines)
    assert any(
        line.startswith(f"Sequence {name} step Flaky (attempt 1) failed: ") for line in lines
    )
    assert any(
        line.startswith(f"Sequence {name} step Flaky (attempt 2) succeeded in ")
        and line.endswith("next: step C.")
        for line in lines
    )
    assert any(
        line.startswith(f"Sequence {name} step C (attempt 1) succeeded")
        and line.endswith("the sequence is completed.")
        for line in lines
    )


@pytest.mark.django_db(transaction=True)
def test_the_timeline_marks_a_retry_by_hand_a_retry_from_a_step_and_a_recovery():
    seq = Compensating.start({})
    for _ in range(3):
        run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    seq.retry(data={"fixed": True}, force=True)
    run_jobs()
    seq.refresh()
    assert seq.status == Status.COMPLETED
    record = SequenceRecord.objects.get(pk=seq.id)
    bars = timeline.build(record, list(StepAttempt.objects.filter(sequence=record))).bars
    marked = [(b.label, b.mark) for b in bars if b.mark]
    assert marked == [("2. Broken · try 1", "retried")]
    assert "(retried)" in next(b.title for b in bars if b.mark)

    now = timezone.now()
    other = make_record(status=Status.COMPLETED, plan=["A", "B"], step_index=2)
    rows = [
        (0, 1, 1, Outcome.LOST),
        (0, 2, 1, Outcome.SUCCEEDED),
        (1, 3, 1, Outcome.FAILED),
        (0, 5, 1, Outcome.SUCCEEDED),  # retry(from_step="A")
    ]
    attempts = [
        StepAttempt(
            sequence=other,
            step_index=index,
            step="AB"[index],
            epoch=epoch,
            attempt=attempt,
            outcome=outcome,
            started_at=now + timedelta(seconds=n),
            finished_at=now + timedelta(seconds=n, milliseconds=500),
        )
        for n, (index, epoch, attempt, outcome) in enumerate(rows)
    ]
    marks = [b.mark for b in timeline.build(other, attempts, now=now).bars]
    assert marks == ["recovered by the sweep", "", "", "retried from step 1"]


@pytest.mark.django_db
def test_list_shows_the_attempts_of_the_last_step_that_ran_once_finished():
    done = make_record(status=Status.COMPLETED, step_index=3, attempt=0)
    now = timezone.now()
    StepAttempt.objects.create(
        sequence=done, step_index=2, step="C", epoch=2, attempt=2,
        outcome=Outcome.SUCCEEDED, started_at=now, finished_at=now,
    )  # fmt: skip
    waiting = make_record(status=Status.PENDING, attempt=0)
    retrying = make_record(status=Status.RETRYING, attempt=2)
    out, _ = sequence("list")
    rows = {line.split()[0]: line.split()[5] for line in out.splitlines()[1:]}
    assert rows == {str(done.pk): "2", str(waiting.pk): "-", str(retrying.pk): "2"}


@pytest.mark.django_db(transaction=True)
def test_show_piped_into_head_ends_quietly():
    seq = ThreeSteps.start({f"key{i}": "x" * 100 for i in range(3000)})  # more than a pipe holds
    env = {"SEQUENCE_DB_NAME": str(connection.settings_dict["NAME"])}
    proc = subprocess.Popen(
        f"{sys.executable} manage.py sequence show {seq.id} | head -n 2",
        shell=True, cwd=ROOT, env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert out.splitlines()[0].startswith(f"Sequence #{seq.id}")
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err
