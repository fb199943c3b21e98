"""Fault 1c: the SIGKILL storm on django-rq's own ``rqworker``.

Three ``manage.py rqworker`` processes set up as docs/workers.md says (JSON serializer,
``SequenceJob``, RQ's scheduler) and one ``manage.py sequence recover --loop`` beside
them, the only sweep. A random worker's whole session (the worker, its work-horse, RQ's
scheduler) is killed every ~0.7 s and replaced. A few of the kills are aimed: every
sequence row is held for a moment so that no work-horse can claim its step, and a worker
whose horse has started its job (RQ says "started") is killed then, leaving a job in a
dead worker's started registry for a step nobody claimed.

Such workers keep no liveness beats: a killed one's claimed step waits for its lease
(step timeout + SEQUENCE_LEASE_MARGIN), and a job its horse took without claiming the
step is lost once RQ's heartbeat of the job has gone silent. Every sequence must
complete within the bound docs/guarantees.md states, the lease plus a sweep interval
(with room for the steps left to run and a busy machine), each step recorded once.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F
from rq.job import Job
from rq.utils import utcformat
from rq.worker import Worker

from sequence.declare.conf import Defaults
from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.engine.rq.registries import STARTED_JOB_SILENCE
from sequence.engine.states import Status
from sequence.models import SequenceRecord
from sequence.ops import faults
from testproject.testapp.faults import FaultChain
from testproject.testapp.models import Journal

from ..conftest import ROOT
from .checker import assert_ok, check
from .conftest import FAULT_SETTINGS, Fleet, env_for, session_members, settle

SEQUENCES = 60
WORKERS = 3
STORM_SECONDS = 15
KILL_EVERY = 0.7
SWEEP_EVERY = 2.0
# Seconds into the storm of the aimed kills, how long each may look for its victim, and
# how long it holds the rows at a time.
AIMED_AT = (3.0, 7.0, 11.0)
AIM_FOR = 10.0
HOLD = 1.0
# The documented bound for workers without beats: a claimed step's lease, then a sweep.
LEASE = FAULT_SETTINGS["TIMEOUT"] + Defaults.LEASE_MARGIN
BOUND = LEASE + SWEEP_EVERY
# Room for a sweep interval, the steps still to run once recovered, and a busy machine.
MARGIN = 60

pytestmark = pytest.mark.django_db(transaction=True)

# The command docs/workers.md gives for running sequence steps on django-rq's worker, less
# its --worker-class: that changes how a worker stops, and these are killed, with RQ's
# own forking worker, whose work-horses the aimed kills need.
RQWORKER = [
    "rqworker", "default", "--with-scheduler",
    "--serializer", "rq.serializers.JSONSerializer",
    "--job-class", "sequence.jobs.SequenceJob",
]  # fmt: skip
RECOVER = ["sequence", "recover", "--loop", str(SWEEP_EVERY)]


class RQFleet(Fleet):
    """``manage.py`` processes other than ``sequence worker``, each in its own session."""

    def start(
        self, n: int = 1, *, env: dict[str, str] | None = None, command: list[str] = RQWORKER,
        **ignored: Any,
    ) -> list[subprocess.Popen[bytes]]:  # fmt: skip
        started = []
        for _ in range(n):
            index = len(self.procs)
            with (self.logs / f"worker-{index}.log").open("wb") as log:
                proc = subprocess.Popen(
                    [sys.executable, "manage.py", *command], cwd=ROOT,
                    env=self.env({**self.base_env, **(env or {})}),
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self.procs.append(proc)
            started.append(proc)
        return started


def _client_check() -> dict[str, str]:
    """PostgreSQL's check for clients that went away, in the workers' sessions.

    A horse killed while its claim waits on the rows the test holds must not claim after
    its death. PostgreSQL notices a client is gone only when told to look (14 and later);
    otherwise the waiting statement commits once the rows are free, and that step waits
    for its lease instead, as after the storm's other kills.
    """
    if connection.vendor != "postgresql" or getattr(connection, "pg_version", 0) < 140000:
        return {}
    return {"PGOPTIONS": "-c client_connection_check_interval=100"}


@pytest.fixture
def rq_fleet(tmp_path: Path, request: Any) -> Iterator[RQFleet]:
    pool = RQFleet(tmp_path, {**env_for(), **_client_check()})
    try:
        yield pool
    finally:
        pool.stop_all()
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            print("---- process logs (last 6000 characters) ----")
            print(pool.output()[-6000:])


def _horse(proc: subprocess.Popen[bytes]) -> int | None:
    """The pid of the worker's work-horse, if it has one now (RQ's horse leads a process
    group of its own, in the worker's session)."""
    for pid in session_members(proc.pid):
        if pid == proc.pid:
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[2]) == pid:
            return pid
    return None


def _redispatches(ids: list[int]) -> dict[str, int]:
    """The sweep's re-dispatches of unclaimed rows, from the journal: a new epoch, no claim
    before or after; with no outbox entry before it (a lost job), or with an overdue one."""
    moves = Journal.objects.filter(
        seq_id__in=ids, op="U", old_token__isnull=True, new_token__isnull=True,
        new_due=True, new_epoch=F("old_epoch") + 1,
    )  # fmt: skip
    return {
        "lost_jobs": moves.filter(old_due=False).count(),
        "overdue_dispatches": moves.filter(old_due=True).count(),
    }


def _unit(jid: str | None) -> tuple[int, int, int] | None:
    """(sequence, step, epoch) of a step job's id ``seq-<id>-<step>-<epoch>``."""
    parts = (jid or "").split("-")
    if len(parts) != 4 or parts[0] != "seq":
        return None
    return int(parts[1]), int(parts[2]), int(parts[3])


def _kill_before_claim(
    fleet: RQFleet, workers: list[subprocess.Popen[bytes]], ids: list[int]
) -> tuple[int, int] | None:
    """Kill a worker whose horse has started its job but not claimed the step, and
    replace it: the (sequence, epoch) of that job, or None if none was caught in AIM_FOR
    seconds.

    Every row is held a second at a time, so that no step can be claimed meanwhile. A
    horse held in the middle of a step it claimed earlier (or, on SQLite, a worker held
    while it starts) is no use: the rows are let go between tries, so they move on.
    """
    deadline = time.monotonic() + AIM_FOR
    while time.monotonic() < deadline:
        caught = _hold_and_kill(fleet, workers, ids, until=time.monotonic() + HOLD)
        if caught is not None:
            return caught
        time.sleep(HOLD / 4)
    return None


def _hold_and_kill(
    fleet: RQFleet, workers: list[subprocess.Popen[bytes]], ids: list[int], until: float
) -> tuple[int, int] | None:
    redis = get_queue("default").connection
    # PostgreSQL locks the rows; SQLite's IMMEDIATE transaction holds the whole database.
    with transaction.atomic():
        rows = SequenceRecord.objects.select_for_update().filter(pk__in=ids)
        held = {
            pk: (step, epoch, token)
            for pk, step, epoch, token in rows.values_list(
                "pk", "step_index", "epoch", "claim_token"
            )
        }
        while time.monotonic() < until:
            by_pid = {w.pid: w for w in Worker.all(connection=redis)}
            for proc in workers:
                rq_worker = by_pid.get(proc.pid)
                jid = rq_worker.get_current_job_id() if rq_worker is not None else None
                unit = _unit(jid)
                horse = _horse(proc)
                if unit is None or horse is None:
                    continue
                seq, step, epoch = unit
                if redis.hget(Job.key_for(str(jid)), "status") != b"started":
                    continue
                if held.get(seq) != (step, epoch, None):
                    continue  # claimed before the rows were held, or stale
                backend = _claim_waiting(horse)
                if backend == 0:
                    continue  # PostgreSQL: its claim is not waiting on the rows yet
                workers.remove(proc)
                workers.append(fleet.replace(proc))
                _until_ended(backend)
                return seq, epoch
            time.sleep(0.05)
    return None


def _claim_waiting(horse: int) -> int | None:
    """On PostgreSQL, the backend whose statement from ``horse`` waits on the rows this
    session holds (0: none). None on SQLite, where a killed process writes nothing more.

    Matched by the client's TCP port: the horse's sockets, read from /proc.
    """
    if connection.vendor != "postgresql":
        return None
    ports = _local_ports(horse)
    if not ports:
        return 0
    with connection.cursor() as cursor:
        # The statistics views keep their first answer for the whole transaction.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)"
            " AND pg_backend_pid() = ANY(pg_blocking_pids(pid))",
            [sorted(ports)],
        )
        found = cursor.fetchone()
    return int(found[0]) if found else 0


def _local_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process ``pid`` holds open."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _until_ended(backend: int | None, timeout: float = 10) -> None:
    """Keep the rows until PostgreSQL has ended the killed horse's waiting claim (see
    ``_client_check``): released earlier, the claim would commit after the horse's death."""
    deadline = time.monotonic() + timeout
    while backend and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [backend])
            if cursor.fetchone() is None:
                return
        time.sleep(0.02)


def _recovered_unclaimed(seq: int, epoch: int) -> bool:
    """Whether the journal shows ``seq`` never claimed at ``epoch`` and moved on by the
    sweep to the next epoch, still unclaimed."""
    rows = Journal.objects.filter(seq_id=seq)
    claimed = rows.filter(new_epoch=epoch, new_token__isnull=False).exists()
    moved = rows.filter(
        old_epoch=epoch, new_epoch=epoch + 1, old_token__isnull=True, new_token__isnull=True
    ).exists()
    return moved and not claimed


@pytest.mark.slow
@pytest.mark.timeout(STORM_SECONDS + len(AIMED_AT) * AIM_FOR + BOUND + MARGIN + 120)
def test_rqworker_sigkill_storm_recovers_every_sequence_within_the_lease(rq_fleet):
    ids = [FaultChain.start({"sleep": [0.01, 0.08]}).id for _ in range(SEQUENCES)]
    rq_fleet.start(command=RECOVER)
    workers = rq_fleet.start(WORKERS)
    rng = random.Random(3)
    horses_killed = 0
    aims = list(AIMED_AT)
    before_claim: list[tuple[int, int]] = []
    aiming: list[float] = []  # seconds each aimed kill held the rows (not storm time)
    began = time.monotonic()
    while (elapsed := time.monotonic() - began - sum(aiming)) < STORM_SECONDS:
        if aims and elapsed >= aims[0]:
            aims.pop(0)
            held_at = time.monotonic()
            if (unit := _kill_before_claim(rq_fleet, workers, ids)) is not None:
                before_claim.append(unit)
            aiming.append(round(time.monotonic() - held_at, 1))
            continue
        time.sleep(KILL_EVERY * rng.uniform(0.5, 1.5))
        victim = rng.choice(workers)
        horses_killed += _horse(victim) is not None
        workers.remove(victim)
        workers.append(rq_fleet.replace(victim))
    stopped = time.monotonic()
    settle(ids, timeout=BOUND + MARGIN, done={Status.COMPLETED}, sweep=False)
    recovered_in = round(time.monotonic() - stopped, 1)
    print(
        f"every sequence completed {recovered_in}s after the storm (bound {BOUND}s); "
        f"killed before their claim: {before_claim}, rows held for {aiming}s"
    )
    report = check(
        "1c SIGKILL storm, rqworker", ids,
        faults={
            "workers_killed": rq_fleet.kills, "horses_killed": horses_killed,
            "killed_before_claim": len(before_claim), "rows_held_s": aiming,
            "storm_seconds": STORM_SECONDS, "workers": WORKERS,
            "completed_after_storm_s": recovered_in, "bound_s": BOUND, **_redispatches(ids),
        },
    )  # fmt: skip
    assert_ok(report)
    assert before_claim, "no worker was caught with a started job before its claim"
    for seq, epoch in before_claim:
        journal = list(Journal.objects.filter(seq_id=seq).order_by("id").values())
        assert _recovered_unclaimed(seq, epoch), f"#{seq} at epoch {epoch}: {journal}"


def test_a_job_an_rqworker_started_is_live_until_rqs_heartbeat_of_it_goes_silent():
    """The rule the aimed kills rely on, without processes: a job left "started" by a
    worker that keeps no beats of ours counts as live while RQ's heartbeat of it is
    recent, and as lost once it has been silent for STARTED_JOB_SILENCE."""
    seq = FaultChain.start({})
    queue = get_queue("default")
    jid = job_id(seq.id, 0, 0)
    # What a killed rqworker leaves: the job out of the queue's list, "started" by it.
    queue.connection.lrem(queue.key, 0, jid)

    def started(seconds_ago: float) -> None:
        beat = datetime.now(UTC) - timedelta(seconds=seconds_ago)
        queue.connection.hset(
            Job.key_for(jid),
            mapping={"status": "started", "worker_name": "rq-1", "last_heartbeat": utcformat(beat)},
        )

    started(STARTED_JOB_SILENCE - 30)
    assert faults.sweep(grace=0).redispatched == []
    started(STARTED_JOB_SILENCE + 1)
    assert faults.sweep(grace=0).redispatched == [seq.id]
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.status, record.step_index, record.epoch) == (Status.PENDING, 0, 1)
    assert queue.connection.lpos(queue.key, job_id(seq.id, 0, 1)) is not None
