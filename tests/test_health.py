"""`sequence.ops.health` and `manage.py sequence health`: workers, backlog, counts, stuck rows."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sequence.engine import recovery
from sequence.engine.states import Status
from sequence.models import SequenceRecord, WorkerBeat
from sequence.ops.health import gather
from testproject.testapp.sequences import QueueHopping, ThreeSteps

from .conftest import ROOT, wait_for
from .lifecycle_support import make_record

# The test project's sequences use "default" and "high" (QueueHopping's first step).
QUEUES = ("default", "high")


def health_in_shell(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEQUENCE_DB_NAME": str(connection.settings_dict["NAME"])}
    return subprocess.run(
        [sys.executable, "manage.py", "sequence", "health", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _queue(health, name):
    return next(q for q in health.queues if q.name == name)


def _age(record: SequenceRecord, seconds: float, **fields) -> None:
    SequenceRecord.objects.filter(pk=record.pk).update(
        updated_at=timezone.now() - timedelta(seconds=seconds), **fields
    )


@pytest.mark.django_db(transaction=True)
def test_every_status_is_counted_with_zero_where_there_is_none():
    make_record(status=Status.COMPLETED, step_index=3)
    make_record(status=Status.COMPLETED, step_index=3)
    make_record(status=Status.PAUSED)
    health = gather()
    assert health.by_status == {
        **{str(status): 0 for status in Status},
        "completed": 2,
        "paused": 1,
    }


@pytest.mark.django_db(transaction=True)
def test_the_queues_are_the_setting_the_definitions_and_the_records_in_flight():
    make_record(status=Status.PAUSED, queue="reports")
    make_record(status=Status.COMPLETED, step_index=3, queue="archived")
    names = [q.name for q in gather().queues]
    assert names[:2] == ["default", "high"]
    assert "reports" in names
    assert "archived" not in names  # only finished sequences use it


@pytest.mark.django_db(transaction=True)
def test_a_queue_without_a_worker_is_unhealthy_and_says_who_waits_and_what_to_run():
    for _ in range(3):
        ThreeSteps.start({})
    QueueHopping.start({})  # its first step runs on "high"
    health = gather()
    default, high = _queue(health, "default"), _queue(health, "high")
    assert (default.length, default.waiting, default.workers) == (3, 3, ())
    assert (high.length, high.waiting) == (1, 1)
    assert default.oldest_age is not None
    assert 0 <= default.oldest_age < 30
    assert health.waiting_without_worker == 4
    assert not health.healthy
    assert health.exit_code == 1
    assert (
        "queue 'default' has no live worker: 3 sequences wait on it; "
        "start `python manage.py sequence worker default`"
    ) in health.problems
    assert "queue 'high' has no live worker: 1 sequence waits on it" in health.problems[1]
    assert health.by_status["pending"] == 4


@pytest.mark.django_db(transaction=True)
def test_the_oldest_queued_job_is_aged_from_when_it_was_queued(redis_db):
    ThreeSteps.start({})
    queue = redis_db.lrange("rq:queue:default", 0, 0)[0].decode()
    an_hour_ago = (timezone.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    redis_db.hset(f"rq:job:{queue}", "enqueued_at", an_hour_ago)
    oldest = _queue(gather(), "default").oldest_age
    assert oldest is not None
    assert 3590 < oldest < 3700


@pytest.mark.django_db(transaction=True)
def test_stuck_rows_are_counted_by_the_sweeps_own_rules(redis_db):
    now = timezone.now()
    dead_worker = WorkerBeat.objects.create(
        name="gone", started_at=now, last_seen=now - timedelta(minutes=5), queues="default"
    )
    make_record(
        status=Status.RUNNING, claim_token="t1", claimed_by="alive-somewhere",
        lease_until=now - timedelta(seconds=1),
    )  # fmt: skip
    make_record(
        status=Status.RUNNING, claim_token="t2", claimed_by=dead_worker.name,
        lease_until=now + timedelta(hours=1),
    )  # fmt: skip
    make_record(status=Status.RUNNING, claim_token="t3", lease_until=now + timedelta(hours=1))
    make_record(status=Status.PENDING, dispatch_due=now - timedelta(minutes=5))
    make_record(status=Status.PENDING, dispatch_due=now)  # within the grace
    lost = make_record(status=Status.PENDING)
    _age(lost, 300)  # no job in RQ (nothing was queued), not touched for 5 minutes
    queued = ThreeSteps.start({})
    _age(SequenceRecord.objects.get(pk=queued.id), 300)  # old, but its job is in RQ
    retrying = make_record(status=Status.RETRYING)
    _age(retrying, 5)  # within the grace
    make_record(status=Status.FAILED, finished_at=now)
    make_record(status=Status.FAILED, finished_at=now - timedelta(hours=2))

    health = gather()
    assert health.stuck.dead_claims == 2 == recovery.dead_claims().count()
    assert health.stuck.overdue_outbox == 1 == recovery.overdue(30).count()
    assert health.stuck.lost_jobs == 1
    assert health.stuck.lost_checked
    assert health.stuck.total == 4
    assert health.failed_last_hour == 1
    assert health.retrying == 1
    problems = " ".join(health.problems)
    assert "2 sequences hold a claim whose lease ran out or whose worker is dead" in problems
    assert "1 sequence has a step due for over 30s that was never confirmed queued" in problems
    assert "1 pending or retrying sequence has no job in RQ for its step" in problems
    assert redis_db.keys("sequence:*") == []  # a health check writes nothing

    # The admin's reading (rows in flight and the last hour's) counts the same, less the
    # sequence that failed two hours ago.
    before = gather(lost_jobs=False)
    recent = gather(lost_jobs=False, whole_table=False)
    assert recent.stuck == before.stuck
    assert (before.stuck.dead_claims, before.stuck.overdue_outbox) == (2, 1)
    assert recent.failed_last_hour == before.failed_last_hour == 1
    assert recent.by_status == {**before.by_status, Status.FAILED: 1}
    assert [q.name for q in recent.queues] == [q.name for q in before.queues]

    # The sweep agrees: it takes back exactly what health called stuck.
    result = recovery.sweep()
    assert len(result.redispatched) + len(result.failed) == 4


@pytest.mark.django_db(transaction=True)
def test_lost_jobs_past_one_batch_are_reported_as_a_floor(settings):
    settings.SEQUENCE_SWEEP_BATCH = 2
    for _ in range(3):
        _age(make_record(status=Status.PENDING), 300)
    stuck = gather().stuck
    assert (stuck.lost_jobs, stuck.lost_checked) == (2, False)
    assert "at least 2 pending or retrying sequences" in " ".join(gather().problems)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sequences", [3, 60])
def test_health_takes_a_fixed_number_of_queries(django_assert_max_num_queries, sequences):
    for index in range(sequences):
        record = make_record(status=[Status.PENDING, Status.RUNNING, Status.FAILED][index % 3])
        _age(record, 300)
    # The groups, the worker rows, and one batch of possibly lost rows.
    with django_assert_max_num_queries(3):
        health = gather()
    assert health.stuck.lost_jobs == (sequences + 2) // 3
    with django_assert_max_num_queries(2):
        gather(lost_jobs=False)


@pytest.mark.django_db(transaction=True)
def test_unhealthy_without_a_worker_then_healthy_with_one(workers):
    ThreeSteps.start({})
    down = health_in_shell()
    assert down.returncode == 1, down.stdout + down.stderr
    assert "UNHEALTHY" in down.stdout
    assert "queue 'default' has no live worker" in down.stdout
    assert "CommandError: Unhealthy" in down.stderr

    proc = workers.start(queues=QUEUES)[0]
    wait_for(lambda: gather().healthy, message="a healthy report with the worker up")
    up = health_in_shell("--json")
    assert up.returncode == 0, up.stdout + up.stderr
    report = json.loads(up.stdout)
    assert report["healthy"] is True
    assert report["problems"] == []
    default = next(q for q in report["queues"] if q["name"] == "default")
    # Known from its beats and from RQ's registry: listed once.
    assert [(w["pid"], w["source"]) for w in default["workers"]] == [(proc.pid, "beat")]

    workers.kill(proc)
    proc.wait(timeout=10)
    # Killed: RQ keeps its key for minutes, but its beats stop and the sweep's rule
    # calls it dead after SEQUENCE_WORKER_DEAD_AFTER.
    WorkerBeat.objects.update(last_seen=timezone.now() - timedelta(minutes=5))
    assert "queue 'default' has no live worker" in " ".join(gather().problems)


@pytest.mark.django_db(transaction=True)
def test_a_django_rq_rqworker_counts_as_a_live_worker(workers, tmp_path):
    env = workers.env()
    with (tmp_path / "rqworker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", *QUEUES],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    workers.procs.append(proc)  # killed by pid at teardown
    health = wait_for(lambda: (h := gather()).healthy and h, message="rqworker seen")
    assert [(w.pid, w.source) for w in _queue(health, "high").workers] == [(proc.pid, "rq")]
    assert WorkerBeat.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_command_prints_a_report_and_json_and_fails_when_unhealthy():
    ThreeSteps.start({})
    make_record(status=Status.FAILED, finished_at=timezone.now())
    out = StringIO()
    with pytest.raises(CommandError, match=r"Unhealthy: 2 problems"):
        call_command("sequence", "health", stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert text.startswith("Sequence health: UNHEALTHY")
    assert re.search(r"Queue default: 1 queued, oldest \d+s, 1 sequences waiting, 0 live", text)
    assert (
        "Sequences: 0 queued, 1 pending, 0 running, 0 retrying, 0 sleeping, 0 waiting, 0 paused, "
        "0 compensating, 0 completed, 1 failed"
    ) in text
    assert "Failed in the last hour: 1; retrying: 0; stuck: 0" in text
    assert "  - queue 'high' has no live worker: 0 sequences wait on it" in text

    out = StringIO()
    with pytest.raises(CommandError):
        call_command("sequence", "health", "--json", stdout=out, stderr=StringIO())
    report = json.loads(out.getvalue())
    assert report["healthy"] is False
    assert report["by_status"]["pending"] == 1
    assert report["failed_last_hour"] == 1
    assert report["stuck"] == {
        "dead_claims": 0, "overdue_outbox": 0, "lost_jobs": 0, "lost_checked": True, "total": 0,
    }  # fmt: skip
    assert [q["name"] for q in report["queues"]] == list(QUEUES)


# -- the admin's list -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_list_shows_the_warnings_and_counts_above_the_table(admin_client):
    from django.urls import reverse

    url = reverse("admin:sequence_sequencerecord_changelist")
    ThreeSteps.start({})
    make_record(status=Status.FAILED, finished_at=timezone.now())
    make_record(status=Status.COMPLETED, finished_at=timezone.now() - timedelta(days=2))
    make_record(
        status=Status.RUNNING, claim_token="t", lease_until=timezone.now() - timedelta(seconds=1)
    )
    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(url)
    # The rows in flight by group, the last hour's finished ones, the worker rows.
    health_queries = [
        q["sql"]
        for q in captured.captured_queries
        if 'COUNT("sequence_record"."id")' in q["sql"] or '"sequence_worker"' in q["sql"]
    ]
    assert len(health_queries) == 3, health_queries
    # Neither reads the rows finished before the last hour.
    assert all("GROUP BY" not in sql or '"status" IN' in sql for sql in health_queries)
    html = response.content.decode()
    assert html.index('id="sequence-health"') < html.index('id="result_list"')
    assert (
        '<li class="warning">queue &#x27;default&#x27; has no live worker: 1 sequence waits on it; '
        "start `python manage.py sequence worker default`</li>"
    ) in html
    assert "1 sequence holds a claim whose lease ran out" in html
    assert (
        "1 pending · 1 running · 0 retrying · 0 sleeping · 0 waiting · 0 paused · "
        "0 compensating · 1 failed in the last hour · 1+ stuck" in html
    )
    # Counted in the last hour only: the old completed row is not read.
    assert response.context["sequence_health"].by_status["completed"] == 0


@pytest.mark.django_db(transaction=True)
def test_the_admin_list_has_no_warnings_when_all_is_well(admin_client, workers):
    from django.urls import reverse

    workers.start(queues=QUEUES)
    wait_for(lambda: gather().healthy, message="the worker's first beat")
    response = admin_client.get(reverse("admin:sequence_sequencerecord_changelist"))
    html = response.content.decode()
    assert 'class="warning"' not in html
    assert (
        "0 pending · 0 running · 0 retrying · 0 sleeping · 0 waiting · 0 paused · "
        "0 compensating · 0 failed in the last hour"
    ) in html


@pytest.mark.django_db(transaction=True)
def test_show_and_the_admin_say_when_no_worker_listens_on_a_pending_sequences_queue(
    admin_client,
):
    from io import StringIO

    from django.core.management import call_command

    from testproject.testapp.sequences import ThreeSteps

    seq = ThreeSteps.start({})
    out = StringIO()
    call_command("sequence", "show", str(seq.id), stdout=out)
    assert "no live worker listens on queue 'default'" in out.getvalue()
    page = admin_client.get(f"/admin/sequence/sequencerecord/{seq.id}/change/")
    assert "no live worker listens on queue" in page.content.decode()
