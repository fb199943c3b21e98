"""Redis that stays clean: every step job the library creates ends with a bounded life."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.db.models import Count
from django.test import override_settings
from django.utils import timezone

from sequence.engine.states import TERMINAL, Status
from sequence.models import SequenceRecord
from sequence.ops.retention import prune
from testproject.testapp.sequences import Compensating, FlakySequence, SnoozeUntil, ThreeSteps

from .conftest import wait_for
from .lifecycle_support import queued_jobs, run_jobs

# Keys RQ keeps per queue or per worker, not per job: a fixed number however many
# sequences run, each emptied or expired by RQ itself. They have no TTL by design.
BOOKKEEPING = {
    "rq:queues",  # the set of queue names
    "rq:workers",  # the set of live workers
    "rq:workers:default",  # the same, per queue
    "rq:queue:default",  # the list of waiting jobs (gone when empty)
    "rq:wip:default",  # jobs being run (RQ 2's started registry)
    "rq:finished:default",  # registries: sorted sets whose entries expire with their job
    "rq:failed:default",
    "rq:scheduled:default",
    "rq:deferred:default",
    "rq:canceled:default",
    "rq:clean_registries:default",  # RQ's own throttle, with a TTL
    "rq:scheduler-lock:default",  # the scheduler's lock, with a TTL
    "rq:scheduler_instance:default",
}


def keys(conn) -> dict[str, int]:
    """Every rq:* and sequence:* key with its TTL (-1: none)."""
    names = [k.decode() for k in conn.scan_iter("rq:*")] + [
        k.decode() for k in conn.scan_iter("sequence:*")
    ]
    return {name: conn.ttl(name) for name in names}


def per_job(found: dict[str, int]) -> dict[str, int]:
    return {
        k: ttl
        for k, ttl in found.items()
        if k not in BOOKKEEPING and not k.startswith(("rq:worker:", "rq:scheduler"))
    }


# What may remain per job, each with a TTL: a step job's hash and its results stream, the
# library's own keys, and RQ's mark of a job it saw in the queue's intermediate list. A
# worker's maintenance (at its start, then every 10 minutes) that finds a job there, taken
# by another worker's dequeue and not yet in the started registry, sets
# rq:queue:default:intermediate:first_seen:<job id> for 24 hours (RQ's
# IntermediateQueue.set_first_seen) and never deletes it. Two workers starting on a full
# queue meet that moment now and then (about one run in ten here: seq-1-0-0, the first).
PER_JOB = (
    "rq:job:seq-",
    "rq:results:",
    "sequence:",
    "rq:queue:default:intermediate:first_seen:seq-",
)


def offending(found: dict[str, int], which) -> str:
    """The keys for which which(key, ttl) holds, first and all of them, then how many
    keys there were: a failure names what is wrong before anything else is cut off."""
    bad = sorted((k, ttl) for k, ttl in found.items() if which(k, ttl))
    return f"{len(bad)} unexpected (key, ttl): {bad} -- of {len(found)} keys"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@override_settings(SEQUENCE_WORKER_HEARTBEAT=1)
def test_a_thousand_sequences_to_every_end_leave_a_bounded_set_of_keys_all_expiring(
    workers, redis_db
):
    with transaction.atomic():
        completed = [ThreeSteps.start({}).id for _ in range(400)]
        flaky = [FlakySequence.start({"fail_times": 1}).id for _ in range(200)]
        failed = [Compensating.start({}).id for _ in range(200)]
        one_by_one = [ThreeSteps.start({}) for _ in range(100)]
        many = [ThreeSteps.start({}, key=f"bulk-{i}").id for i in range(100)]
    for seq in one_by_one:
        seq.cancel()  # their queued jobs are deleted, not left canceled forever
    assert ThreeSteps.records().filter(pk__in=many).cancel() == 100
    workers.start(2)
    wait_for(
        lambda: SequenceRecord.objects.exclude(status__in=TERMINAL).count() == 0,
        timeout=300,
        message="every sequence ended",
    )
    wait_for(lambda: not queued_jobs(), timeout=60, message="the queue drained")
    by_status = dict(SequenceRecord.objects.values_list("status").annotate(n=Count("id")))
    assert by_status == {Status.COMPLETED: 600, Status.FAILED: 200, Status.CANCELED: 200}
    assert (
        SequenceRecord.objects.filter(pk__in=completed + flaky, status=Status.COMPLETED).count()
        == 600
    )
    assert SequenceRecord.objects.filter(pk__in=failed, status=Status.FAILED).count() == 200
    workers.stop_all()

    left = per_job(keys(redis_db))
    # What remains per job: the 200 failed steps' jobs, kept SEQUENCE_FAILED_TTL.
    assert all(ttl != -1 for ttl in left.values()), offending(left, lambda k, ttl: ttl == -1)
    assert all(k.startswith(PER_JOB) for k in left), offending(
        left, lambda k, ttl: not k.startswith(PER_JOB)
    )
    assert len([k for k in left if k.startswith("rq:job:")]) <= 200
    assert max(ttl for k, ttl in left.items() if k.startswith("rq:job:")) <= 7 * 86400
    rest = {k: ttl for k, ttl in keys(redis_db).items() if k not in left}
    assert len(rest) <= len(BOOKKEEPING) + 10, offending(rest, lambda k, ttl: k not in BOOKKEEPING)

    result = prune(timedelta(0))
    assert result.sequences == 1000
    after = per_job(keys(redis_db))
    assert [k for k in after if k.startswith(("rq:job:", "rq:results:"))] == []
    assert redis_db.zcard("rq:failed:default") == 0
    assert redis_db.zcard("rq:canceled:default") == 0
    assert all(ttl != -1 for ttl in after.values()), offending(after, lambda k, ttl: ttl == -1)


@pytest.mark.django_db(transaction=True)
def test_a_canceled_sequences_queued_job_is_deleted_not_left_canceled(redis_db):
    seq = ThreeSteps.start({})
    job = f"rq:job:seq-{seq.id}-0-0"
    assert redis_db.exists(job)
    seq.cancel()
    assert not redis_db.exists(job)
    assert queued_jobs() == []
    assert redis_db.zcard("rq:canceled:default") == 0


@pytest.mark.django_db(transaction=True)
def test_a_step_job_that_fails_for_good_expires_after_the_failed_ttl(redis_db):
    with override_settings(SEQUENCE_FAILED_TTL=3600):
        seq = Compensating.start({})
        for _ in range(4):
            run_jobs()
    seq.refresh()
    assert seq.status == Status.FAILED
    failed = [k.decode() for k in redis_db.zrange("rq:failed:default", 0, -1)]
    assert failed == [f"seq-{seq.id}-1-1"]
    assert 0 < redis_db.ttl(f"rq:job:{failed[0]}") <= 3600


@pytest.mark.django_db(transaction=True)
def test_a_wake_up_job_a_canceled_sleep_left_is_deleted_by_prune(redis_db):
    # Slept outside a `sequence worker` (here), so the Sleep scheduled its wake-up job.
    seq = SnoozeUntil.start({"wake_at": (timezone.now() + timedelta(days=3)).isoformat()})
    run_jobs()
    job = f"rq:job:seq-{seq.id}-2-2-wake"
    assert 3 * 86400 < redis_db.ttl(job) <= 4 * 86400 + 1  # bounded: a day past its time
    seq.cancel()  # the job stays until its time, when it would do nothing
    assert redis_db.exists(job)
    assert prune(timedelta(0)).sequences == 1
    assert not redis_db.exists(job)
    assert redis_db.zcard("rq:scheduled:default") == 0
