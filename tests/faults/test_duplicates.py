"""Fault 5: duplicate delivery. Every dispatch enqueued three times, completed jobs
requeued from RQ's failed registry, and every old job id enqueued again: no step body
runs twice, no step is recorded twice, no sequence moves twice."""

from __future__ import annotations

import json

import pytest
from rq.registry import FailedJobRegistry

from sequence.engine.rq.dispatch import enqueue_step, get_queue, job_id
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from testproject.testapp.faults import FaultChain, FixableChain
from testproject.testapp.models import BodyRun, Journal, Payment

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import settle, statuses

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


def _triple_first(seq, cls):
    for _ in range(2):
        enqueue_step(seq.id, 0, 0, "default", cls.step_specs[0])


def test_duplicates_requeues_and_old_jobs_change_nothing(fleet):
    chains = [FaultChain.start({"sleep": [0, 0.02]}) for _ in range(20)]
    doubled = [FixableChain.start({}) for _ in range(4)]
    for seq in chains:
        _triple_first(seq, FaultChain)
    for seq in doubled:
        _triple_first(seq, FixableChain)
    requeued = [FixableChain.start({}) for _ in range(3)]
    dup_ids = [s.id for s in chains + doubled]
    points = {"after_dispatch": {"do": "duplicate", "sequence": dup_ids}}
    env = {"SEQUENCE_TEST_POINTS": json.dumps(points)}
    fleet.start(2, env=env)
    fleet.start(kind="fork", env=env)
    fixable = [s.id for s in doubled + requeued]
    settle([s.id for s in chains], timeout=60, sweep=False)
    wait_for(lambda: set(statuses(fixable).values()) == {Status.FAILED}, timeout=60)
    # A duplicate of a job that failed for good does not run the step again.
    wait_for(lambda: get_queue("default").count == 0, timeout=30)
    assert BodyRun.objects.filter(seq_id__in=fixable, step="FailsUntilFixed").count() == 7

    registry = FailedJobRegistry(queue=get_queue("default"))
    failed_jobs = {}
    for seq in requeued:
        record = SequenceRecord.objects.get(pk=seq.id)
        failed_jobs[seq.id] = job_id(seq.id, record.step_index, record.epoch)
        assert failed_jobs[seq.id] in registry.get_job_ids()
    # Two are retried through the API, then their old failed jobs requeued: stale.
    for seq in [*doubled, *requeued[:2]]:
        seq.retry(data={"fixed": True})
    settle([s.id for s in doubled + requeued[:2]], timeout=60, sweep=False, done={Status.COMPLETED})
    for seq in requeued[:2]:
        registry.requeue(failed_jobs[seq.id])
    # One is repaired and its failed job requeued by hand, as `rq requeue` does.
    Payment.objects.create(key=f"fix:{requeued[2].id}", seq_id=0, step="fix")
    registry.requeue(failed_jobs[requeued[2].id])
    settle([s.id for s in requeued], timeout=60, sweep=False, done={Status.COMPLETED})
    wait_for(lambda: get_queue("default").count == 0, timeout=30)

    # Every job id the sequences ever had, enqueued again.
    before = {r.pk: (r.epoch, r.status) for r in SequenceRecord.objects.all()}
    runs_before = BodyRun.objects.count()
    old = set(
        Journal.objects.filter(seq_id__in=before, new_status=Status.RUNNING)
        .exclude(new_token=None)
        .values_list("seq_id", "new_step", "new_epoch")
    )
    for seq_id, step, epoch in old:
        enqueue_step(seq_id, step, epoch, "default", None)
    wait_for(lambda: get_queue("default").count == 0, timeout=60)
    wait_for(lambda: get_queue("default").started_job_registry.count == 0, timeout=30)
    assert {r.pk: (r.epoch, r.status) for r in SequenceRecord.objects.all()} == before
    assert BodyRun.objects.count() == runs_before

    ids = [s.id for s in chains + doubled + requeued]
    report = check(
        "5 duplicate delivery", ids,
        faults={
            "dispatches_tripled": True, "failed_jobs_requeued_after_retry": 2,
            "failed_jobs_requeued_by_hand": 1, "old_job_ids_reenqueued": len(old),
        },
    )  # fmt: skip
    assert_ok(report)
    assert report.body_reruns == 3 + 4  # only FailsUntilFixed: one failure, then one success
