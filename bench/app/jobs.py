"""The hand-written contenders: (a) a bare RQ chain, (b) a Django chain on a locked row.

Each step job enqueues the next one itself, as a user writing the chain by hand would.
Both run the same body as ``sequence``'s steps (``timing.timed_work``).
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from django.db import transaction
from rq import Queue
from rq.serializers import JSONSerializer

from bench.app.timing import timed_work


@cache
def queue(name: str) -> Queue:
    import django_rq

    return Queue(name, connection=django_rq.get_connection(name), serializer=JSONSerializer)


def bare_step(queue_name: str, chain: int, index: int, steps: int, data: dict[str, Any]) -> None:
    """(a) No database: the data rides in the job to the next one."""
    timed_work(data, chain, index)
    if index + 1 < steps:
        queue(queue_name).enqueue(bare_step, queue_name, chain, index + 1, steps, data)


def hand_step(queue_name: str, chain_id: int, index: int) -> None:
    """(b) The realistic floor: lock the row, change data and index, commit, enqueue next."""
    from bench.app.models import HandChain

    with transaction.atomic():
        chain = HandChain.objects.select_for_update().get(pk=chain_id)
        if chain.step_index != index:
            return  # delivered twice: this step is already done
        timed_work(chain.data, chain_id, index)
        chain.step_index = index + 1
        chain.status = "pending" if chain.step_index < chain.steps else "completed"
        chain.save(update_fields=["data", "step_index", "status", "updated_at"])
    if index + 1 < chain.steps:
        queue(queue_name).enqueue(hand_step, queue_name, chain_id, index + 1)


def gate(key: str) -> None:
    """Hold a worker until the driver releases it, so every run starts on a full queue."""
    import django_rq

    conn = django_rq.get_connection("default")
    conn.rpush(f"{key}:in", "1")
    conn.blpop([key], timeout=120)


def park(key: str, limit: float = 120) -> None:
    """``gate`` in waits of a second: in a ``--burst`` worker a step's Redis read times
    out after 5 s (measured, both worker classes), and the worker stop time parks ten
    burst workers at once, the first for as long as the others take to start."""
    import django_rq

    conn = django_rq.get_connection("default")
    conn.rpush(f"{key}:in", "1")
    deadline = time.monotonic() + limit
    while conn.blpop([key], timeout=1) is None and time.monotonic() < deadline:
        pass
