"""Helpers for the lifecycle, admin, command and signal tests."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Permission, User

from sequence.engine.rq.dispatch import get_queue, job_id
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.models import Ledger


def run_jobs(*queues: str) -> None:
    """Run every queued step job in this process, with a real RQ worker in burst mode.

    In-process, so signal receivers and sequences defined in a test module are seen;
    the jobs, Redis and the database are the real ones.
    """
    from sequence.ops.worker import build_worker

    build_worker(list(queues or ("default",))).work(burst=True)


def queued_jobs(queue: str = "default") -> list[str]:
    """Ids of the jobs waiting in ``queue``."""
    return list(get_queue(queue).get_job_ids())


def job_status(record: SequenceRecord) -> str | None:
    """RQ's status of the job for the row's current step and epoch, None if there is none."""
    from rq.exceptions import InvalidJobOperation

    queue = get_queue(record.queue)
    job = queue.fetch_job(job_id(record.pk, record.step_index, record.epoch))
    try:
        return None if job is None else job.get_status().value
    except InvalidJobOperation:  # deleted since it was fetched
        return None


def make_user(username: str, *perms: str, **extra: Any) -> User:
    """A staff user with the named ``sequence`` permissions (``view``, ``change``)."""
    user = User.objects.create_user(username, password="pw", is_staff=True, **extra)
    for perm in perms:
        user.user_permissions.add(
            Permission.objects.get(
                content_type__app_label="sequence", codename=f"{perm}_sequencerecord"
            )
        )
    return user


def make_record(**fields: Any) -> SequenceRecord:
    """A row in any status, for tests of what is shown (not of how it got there)."""
    defaults: dict[str, Any] = {
        "name": "testapp.ThreeSteps",
        "plan": ["A", "B", "C"],
        "queue": "default",
        "data": {},
    }
    return SequenceRecord.objects.create(**{**defaults, **fields})


def ledger(seq_id: int) -> list[str]:
    """The steps a sequence's code recorded in the test app's ledger, in order."""
    return list(
        Ledger.objects.filter(sequence_id=seq_id).order_by("id").values_list("step", flat=True)
    )


def history(seq_id: int) -> list[tuple[str, str]]:
    """A sequence's attempts as (step, outcome), in order."""
    rows = StepAttempt.objects.filter(sequence_id=seq_id).order_by("id")
    return [(row.step, row.outcome) for row in rows]
