"""The sweep's cost with 10,000 sequences in flight: bounded batches of rows, one Redis
pipeline per batch, and only the lost ones re-dispatched."""

from __future__ import annotations

import random
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rq import Queue

from sequence.engine.rq.dispatch import ENTRY_POINT, get_queue, job_id
from sequence.models import SequenceRecord
from sequence.ops import faults
from testproject.testapp.faults import FaultChain

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

IN_FLIGHT, LOST, BATCH = 10_000, 50, 500


def _commands(redis) -> int:
    return int(redis.info("stats")["total_commands_processed"])


def test_a_sweep_over_ten_thousand_sequences_is_batched_and_pipelined(settings, private_redis):
    private_redis()  # its own server: the command count below is the sweep's alone
    settings.SEQUENCE_SWEEP_BATCH = BATCH
    plan = FaultChain.plan_names()
    SequenceRecord.objects.bulk_create(
        [
            SequenceRecord(name=FaultChain.name, plan=plan, queue="default")
            for _ in range(IN_FLIGHT)
        ],
        batch_size=1000,
    )
    an_hour_ago = timezone.now() - timedelta(hours=1)
    SequenceRecord.objects.update(updated_at=an_hour_ago)
    ids = list(SequenceRecord.objects.values_list("pk", flat=True))
    # Half wait in the outbox (queued, never confirmed), half were confirmed long ago.
    SequenceRecord.objects.filter(pk__in=ids[::2]).update(dispatch_due=an_hour_ago)
    queue = get_queue("default")
    for start in range(0, IN_FLIGHT, 1000):
        queue.enqueue_many(
            [
                Queue.prepare_data(
                    ENTRY_POINT, args=(pk, 0, 0), job_id=job_id(pk, 0, 0), timeout=20
                )
                for pk in ids[start : start + 1000]
            ]
        )
    lost = random.Random(3).sample(ids, LOST)
    with queue.connection.pipeline() as pipe:
        for pk in lost:
            pipe.lrem(queue.key, 1, job_id(pk, 0, 0))
        pipe.execute()

    redis = queue.connection
    before = _commands(redis)
    began = time.monotonic()
    with CaptureQueriesContext(connection) as queries:
        result = faults.sweep(grace=30)
    elapsed = time.monotonic() - began
    commands = _commands(redis) - before

    assert sorted(result.redispatched) == sorted(lost)
    batches = IN_FLIGHT // BATCH + 1
    # Per batch: one SELECT (dead claims, outbox, lost jobs) and one UPDATE confirming the
    # outbox entries whose jobs are queued; per recovery: its conditional UPDATE (with
    # BEGIN/COMMIT) and the outbox confirmation after the enqueue.
    assert len(queries) <= 4 * batches + 6 * LOST + 10, len(queries)
    assert not SequenceRecord.objects.exclude(pk__in=lost).filter(dispatch_due__isnull=False)
    # Per job one HMGET; per batch a pipeline for the suspects; per queue one LRANGE.
    assert commands <= IN_FLIGHT + 20 * batches + 15 * LOST, commands
    print(
        f"sweep over {IN_FLIGHT} in flight: {elapsed:.2f}s, {len(queries)} queries, {commands} Redis commands"
    )
    assert elapsed < 30
