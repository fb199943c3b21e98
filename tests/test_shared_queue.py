"""A queue shared with other jobs, and workers that cannot read step jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rq import Callback
from rq.job import Job

from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.models import SequenceRecord
from testproject.testapp.sequences import ThreeSteps

from .conftest import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED = {"SEQUENCE_ALLOWED_JOBS": json.dumps(["testproject.testapp.jobs.add"])}


def failure_of(job: Job) -> str:
    job.refresh()
    assert job.is_failed, job.get_status()
    return job.latest_result().exc_string or ""


def test_a_listed_foreign_job_runs_beside_sequence_steps(workers):
    queue = get_queue("default")
    job = queue.enqueue_call("testproject.testapp.jobs.add", args=(2, 3), result_ttl=60)
    seq = ThreeSteps.start({})
    workers.start(burst=True, env=ALLOWED)[0].wait(30)
    job.refresh()
    assert job.is_finished
    assert job.return_value() == 5
    seq.refresh()
    assert seq.status == "completed"


def test_an_unlisted_foreign_job_is_refused_with_the_way_out(workers):
    queue = get_queue("default")
    job = queue.enqueue_call("testproject.testapp.jobs.multiply", args=(2, 3), result_ttl=60)
    workers.start(burst=True, env=ALLOWED)[0].wait(30)
    error = failure_of(job)
    assert "ForeignJob: Refusing job" in error
    assert "'testproject.testapp.jobs.multiply'" in error
    assert "Give sequences a queue of their own" in error
    assert "SEQUENCE_ALLOWED_JOBS" in error


def test_a_listed_job_naming_an_unlisted_callback_is_refused_before_it_runs(workers, redis_db):
    queue = get_queue("default")
    job = queue.enqueue_call(
        "testproject.testapp.jobs.add", args=(2, 3), result_ttl=60,
        on_success=Callback("testproject.testapp.jobs.announce"),
    )  # fmt: skip
    workers.start(burst=True, env=ALLOWED)[0].wait(30)
    error = failure_of(job)
    assert "the callback 'testproject.testapp.jobs.announce'" in error
    assert job.return_value() is None
    assert not redis_db.exists(f"announced:{job.id}")


def test_a_listed_callback_of_a_listed_job_runs(workers, redis_db):
    queue = get_queue("default")
    job = queue.enqueue_call(
        "testproject.testapp.jobs.add", args=(2, 3), result_ttl=60,
        on_success=Callback("testproject.testapp.jobs.announce"),
    )  # fmt: skip
    allowed = ["testproject.testapp.jobs.add", "testproject.testapp.jobs.announce"]
    workers.start(burst=True, env={"SEQUENCE_ALLOWED_JOBS": json.dumps(allowed)})[0].wait(30)
    job.refresh()
    assert job.is_finished
    assert redis_db.get(f"announced:{job.id}") == b"5"


# RQ's own worker class may take a minute to stop with redis-py 8.2 (docs/workers.md);
# ours reads with the same pickle serializer here, which is what these tests are about.
WORKER_CLASS = ("--worker-class", "sequence.ops.worker.SequenceWorker")


def rqworker(workers, *options: str) -> str:
    """Run django-rq's own worker command in burst mode; its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", "rqworker", "default", "--burst", *WORKER_CLASS, *options],
        cwd=ROOT, env=workers.env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.stdout + done.stderr


@pytest.mark.parametrize(
    "options",
    [[], ["--job-class", "sequence.jobs.SequenceJob"]],
    ids=["rqworker", "rqworker-with-job-class"],
)
def test_a_pickle_worker_fails_a_step_job_naming_the_worker_to_run(workers, options):
    seq = ThreeSteps.start({})
    output = rqworker(workers, *options)
    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == "pending"  # nothing of the step ran
    job = Job.fetch(job_id(seq.id, 0, 0), connection=get_queue("default").connection)
    assert job.get_status() == "scheduled"  # RQ retries it, with the step's retries
    # RQ logs the pickle error, then ours, which the failure callback raised.
    assert "UnpicklingError: invalid load key, '['" in output
    assert "UnreadableJob: This worker could not read step job" in output
    assert "Run `python manage.py sequence worker`" in output
    assert '"SERIALIZER": "rq.serializers.JSONSerializer"' in output
