"""Fault: a SIGKILL storm over sequences under a Concurrency. Never more than the limit
active per key at any commit, and no sequence left queued: every one completes, every
step recorded once."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from sequence.engine.states import TERMINAL, Status
from sequence.models import SequenceRecord
from testproject.testapp.faults import FlowChain
from testproject.testapp.models import Journal

from .checker import assert_ok, check
from .conftest import settle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120), pytest.mark.slow]

SEQUENCES = 40
KEYS = 4
STORM_SECONDS = 8
KILL_EVERY = 0.5


def most_active_per_key(ids: list[int]) -> int:
    """Replay the journal in commit order: the most sequences of one key holding a place
    at once. Ids follow commit order where it matters: an admission writes its row after
    the end that freed its place committed."""
    keys = dict(SequenceRecord.objects.filter(pk__in=ids).values_list("pk", "flow_key"))
    active: Counter[str] = Counter()
    holding: set[int] = set()
    most = 0
    for seq_id, status in (
        Journal.objects.filter(seq_id__in=ids).order_by("id").values_list("seq_id", "new_status")
    ):
        holds = status != Status.QUEUED and status not in TERMINAL
        if holds and seq_id not in holding:
            holding.add(seq_id)
            active[keys[seq_id]] += 1
            most = max(most, active[keys[seq_id]])
        elif not holds and seq_id in holding:
            holding.discard(seq_id)
            active[keys[seq_id]] -= 1
    return most


def test_a_kill_storm_never_lets_more_than_the_limit_run_per_key(fleet):
    datas = [{"account": n % KEYS, "sleep": [0.01, 0.05]} for n in range(SEQUENCES)]
    ids = [seq.id for seq in FlowChain.start_many(datas[: SEQUENCES // 2])]
    ids += [FlowChain.start(data).id for data in datas[SEQUENCES // 2 :]]
    assert SequenceRecord.objects.filter(pk__in=ids, status=Status.QUEUED).count() > 0
    fleet.start(3)
    rng = random.Random(22)
    end = time.monotonic() + STORM_SECONDS
    while time.monotonic() < end:
        time.sleep(KILL_EVERY * rng.uniform(0.5, 1.5))
        fleet.replace(rng.choice(fleet.alive()))
    settle(ids, timeout=90)
    assert most_active_per_key(ids) == 2
    report = check(
        "flow: SIGKILL storm under a Concurrency", ids,
        faults={"workers_killed": fleet.kills, "storm_seconds": STORM_SECONDS, "workers": 3},
    )  # fmt: skip
    assert_ok(report)
