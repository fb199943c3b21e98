"""(g)'s task, imported by django-absurd's workers only (``bench.absurd_settings``)."""

from __future__ import annotations

from typing import Any

from django.tasks import task
from django_absurd import get_absurd_context

from bench.absurd_chain import QUEUE
from bench.app.timing import timed_work


def _step(data: dict[str, Any], chain_id: int, index: int) -> dict[str, Any]:
    timed_work(data, chain_id, index)
    return data


@task(queue_name=QUEUE)
def chain(data: dict[str, Any], chain_id: int, steps: int) -> None:
    """One chain: ``steps`` checkpointed steps, each the same body as the others'."""
    context = get_absurd_context()
    for index in range(steps):
        data = context.step(f"s{index}", lambda: _step(data, chain_id, index))  # noqa: B023
