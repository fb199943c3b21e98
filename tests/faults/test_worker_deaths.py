"""Faults 2 and 13: work-horses and workers that die mid-step, and a poison step.

Also the fenced failure handling: RQ's abandoned-job callback changes a sequence only
if its claim is really dead, and a forking worker's handling of a dead horse touches
only the claim that horse held.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rq.registry import StartedJobRegistry

from sequence.engine.rq.dispatch import get_queue
from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.faults import BeatingChain, FaultChain, PoisonChain
from testproject.testapp.models import BodyRun

from ..conftest import wait_for
from .checker import assert_ok, check
from .conftest import session_members, settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _running_horse(fleet, seen: set[int]):
    """A BodyRun of a step that is running in a work-horse now: (run, worker proc)."""
    leaders = {p.pid for p in fleet.procs}
    for run in BodyRun.objects.exclude(pk__in=seen).order_by("-id")[:20]:
        if run.pid in leaders or not _alive(run.pid):
            continue
        for proc in fleet.alive():
            if run.pid in session_members(proc.pid):
                return run, proc
    return None


@pytest.mark.parametrize("victim", ["horse", "parent", "both"])
def test_a_killed_work_horse_or_worker_loses_no_sequence(fleet, victim):
    seqs = [FaultChain.start({"sleep": 0.6}) for _ in range(4)]
    ids = [s.id for s in seqs]
    fleet.start(2, kind="fork")
    seen: set[int] = set()
    kills = 0
    for _ in range(2):
        run, proc = wait_for(lambda: _running_horse(fleet, seen), timeout=40, message="a horse")
        seen.add(run.pk)
        if victim == "horse":
            os.kill(run.pid, signal.SIGKILL)
        elif victim == "parent":
            os.kill(proc.pid, signal.SIGKILL)  # the horse runs on, on its own
        else:
            fleet.kill_all_of(proc)
        kills += 1
        if victim != "horse":
            proc.wait(timeout=10)
            fleet.start(kind="fork")
        time.sleep(0.3)
    settle(ids, timeout=60)
    report = check(f"2 killed {victim}", ids, faults={f"killed_{victim}": kills})
    assert_ok(report)
    if victim == "horse":
        # The parent saw its horse die and took the step back at once.
        lost = StepAttempt.objects.filter(sequence_id__in=ids, outcome="lost")
        assert lost.count() == kills
        assert all("work-horse" in a.error for a in lost)


@pytest.mark.parametrize("kind", ["fork", "simple"])
def test_a_poison_step_fails_its_sequence_after_the_recovery_limit(fleet, kind, settings):
    settings.SEQUENCE_MAX_RECOVERIES = 2
    env = {"SEQUENCE_MAX_RECOVERIES": "2"}
    poison = PoisonChain.start({})
    healthy = [FaultChain.start({"sleep": 0.05}) for _ in range(6)]
    ids = [poison.id] + [s.id for s in healthy]
    fleet.start(2, kind=kind, env=env)
    deaths = 0

    def poison_failed():
        nonlocal deaths
        for proc in list(fleet.procs):
            if proc.poll() is not None and not getattr(proc, "replaced", False):
                proc.replaced = True  # a process manager would restart it
                deaths += 1
                fleet.start(kind=kind, env=env)
        return SequenceRecord.objects.get(pk=poison.id).status == Status.FAILED

    wait_for(poison_failed, timeout=90, message="the poison sequence to fail")
    settle(ids, timeout=60)
    record = SequenceRecord.objects.get(pk=poison.id)
    assert record.error == "worker died during step Poison (recovered 2 times)"
    runs = BodyRun.objects.filter(seq_id=poison.id, step="Poison").count()
    assert runs == 3  # the first run and two recoveries, then no more
    report = check(
        f"13 poison step ({kind} workers)", ids,
        expect={poison.id: {Status.FAILED}, **{s.id: {Status.COMPLETED} for s in healthy}},
        faults={"poison_runs": runs, "workers_killed_by_poison": deaths},
    )  # fmt: skip
    assert_ok(report)


def test_an_abandoned_job_callback_recovers_only_a_dead_claim(fleet):
    dying, healthy = BeatingChain.start({"beats": 25}), BeatingChain.start({"beats": 25})
    victim, survivor = fleet.start(2)
    wait_for(lambda: BodyRun.objects.filter(step="Beating").count() == 2, timeout=30)
    runs = {r.seq_id: r.pid for r in BodyRun.objects.filter(step="Beating")}
    if runs[dying.id] != victim.pid:
        victim, survivor = survivor, victim
    fleet.kill_all_of(victim)
    victim.wait(timeout=10)
    time.sleep(4)  # the dead worker's beats lapse; the survivor's keep going
    before = SequenceRecord.objects.get(pk=healthy.id)
    # What RQ's maintenance does once the jobs' heartbeats lapse: both look abandoned.
    registry = StartedJobRegistry(queue=get_queue("default"))
    registry.cleanup(timestamp=time.time() + 3600)
    after = SequenceRecord.objects.get(pk=healthy.id)
    assert (after.epoch, after.claim_token) == (before.epoch, before.claim_token)
    lost = StepAttempt.objects.filter(sequence_id=dying.id, outcome="lost")
    assert lost.exists()
    fleet.start()
    settle([dying.id, healthy.id], timeout=60)
    assert_ok(
        check(
            "2 abandoned-job callback (one dead, one live worker)", [dying.id, healthy.id],
            faults={"abandoned_reports": 2, "workers_killed": 1},
        )
    )  # fmt: skip
