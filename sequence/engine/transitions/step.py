"""The statements on a step's path: claim, heartbeat, commit, fail, release.

The claim and the usual commit are hand-written SQL: see the package's docstring.
Pinned by tests/test_transitions.py (statements per step) and tests/test_delivery.py
(fencing against duplicate and stale jobs).
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from sequence.declare.exceptions import StepDeadlineExceeded, StepFenced
from sequence.engine import history, points
from sequence.engine.claims import Claim, Taker, lease_seconds, now_plus_sql, now_sql
from sequence.engine.moves import Move
from sequence.engine.rq.dispatch import Work
from sequence.engine.states import TERMINAL, TRANSITIONS, Outcome, Status, sources
from sequence.engine.transitions.base import RELEASED, compensating, status_in
from sequence.models import Position, SequenceRecord, StepAttempt, ago

logger = logging.getLogger("sequence")


# -- the claim ----------------------------------------------------------------------------


def claim(work: Work, taker: Taker, *, failed: bool = False) -> Claim | None:
    """Take the step if the row still expects it; None if the job is stale.

    A claim takes a queued or retrying step (with ``failed``, a failed one whose RQ job
    was requeued by hand), or this job's own claim (same token) whose acknowledgement a
    lost connection ate.

    A connection lost before the claim is tried once more on a fresh connection; if the
    database stays out of reach, the error goes to the caller.
    """
    sequence_id, step_index, epoch = work.sequence, work.index, work.epoch
    worker, token, timeout = taker.worker, taker.token, taker.timeout
    sql, statuses = _claim_sql(connection.vendor, failed)
    _, lease_arg = now_plus_sql(lease_seconds(timeout))
    params: list[Any] = [
        Status.RUNNING, token, worker[:200], lease_arg, token,
        sequence_id, epoch, step_index, *statuses, token,
    ]  # fmt: skip
    row = None
    for last_try in (False, True):
        try:
            points.fire("before_claim", sequence=sequence_id, step=step_index, epoch=epoch)
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            break
        except (OperationalError, InterfaceError):
            if last_try or connection.in_atomic_block:
                raise
            logger.warning("Sequence %s: the claim lost its connection; once more.", sequence_id)
            connection.close()
    if row is None:
        return None
    name, data, plan, version, queue, attempt, traceparent = row
    record = SequenceRecord(
        pk=sequence_id,
        name=name,
        status=Status.RUNNING,
        data=json.loads(data) if isinstance(data, str) else data,
        plan=json.loads(plan) if isinstance(plan, str) else plan,
        version=version,
        queue=queue,
        step_index=step_index,
        epoch=epoch,
        attempt=attempt,
        claim_token=token,
        claimed_by=worker[:200],
        traceparent=traceparent,
    )
    if failed:
        # Run again by hand after it failed for good: its compensations (if they ran)
        # no longer stand between it and a later retry().
        SequenceRecord.objects.filter(pk=sequence_id, claim_token=token).update(
            undo_index=None, ends_as=""
        )
    return Claim(
        record=record, token=token, worker=worker, started_at=timezone.now(),
        deadline=taker.deadline, timeout=timeout, loaded=data,
    )  # fmt: skip


@cache
def _claim_sql(vendor: str, failed: bool) -> tuple[str, list[Any]]:
    """The claim's statement for this database, and the statuses it names."""
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    now = now_sql()
    lease, _ = now_plus_sql(0)
    relaxed = ""
    if vendor == "postgresql":
        # The claim's commit does not wait for the WAL flush: a claim lost in a crash
        # of PostgreSQL only makes the step claimable again, and the step's own commit
        # (synchronous, later in the same WAL) makes the claim durable before it.
        relaxed = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"
    takes = sources("claim") & TERMINAL if failed else sources("claim") - TERMINAL
    takes_sql, takes_args = status_in(takes)
    own_sql, own_args = status_in(sources("reclaim"))
    sql = f"""
        UPDATE {table}
        SET status = %s, claim_token = %s, claimed_by = %s, claimed_at = {now},
            lease_until = {lease}, dispatch_due = NULL, updated_at = {now},
            attempt = attempt + CASE WHEN claim_token = %s THEN 0 ELSE 1 END
        {relaxed}
        WHERE id = %s AND epoch = %s AND step_index = %s
            AND ({takes_sql} OR ({own_sql} AND claim_token = %s))
        RETURNING name, CAST(data AS TEXT), plan, version, queue, attempt, traceparent
    """
    return sql, [*takes_args, *own_args]


def heartbeat(claim: Claim) -> None:
    """Extend the claim's lease; StepFenced if the step no longer runs under it."""
    points.fire("heartbeat", **claim.context())
    if not (
        claim.mine()
        .filter(status__in=sources("heartbeat"))
        .update(lease_until=ago(-claim.lease_seconds))
    ):
        raise StepFenced(
            f"Sequence {claim.record.pk} was paused, canceled or taken over; stop this step."
        )


# -- the commit ---------------------------------------------------------------------------


def commit(claim: Claim, data: dict[str, Any]) -> Move:
    """Save the data and move to the next step; return what it found and left.

    Running: the next step is due (pending), or the sequence is completed. Paused or
    canceled meanwhile: the result is kept and the sequence stays so (a paused one whose
    last step this was is completed). Conditional on the claim (epoch and token), on its
    lease and on the step's deadline, all read from the database's clock when the
    statement runs. It joins the caller's transaction (an ``atomic`` step's), or makes
    its own.
    """
    last = claim.record.step_index + 1 >= len(claim.record.plan)
    if _commit_running(claim, data):
        claim.settled = True
        return Move(Status.RUNNING, Status.COMPLETED if last else Status.PENDING)
    with transaction.atomic(savepoint=False):
        found = _commit_held(claim, data)
        history.write(claim.entry(Outcome.SUCCEEDED, data=data))
    claim.settled = True
    return Move(found, Status.COMPLETED if last and found == Status.PAUSED else found)


def commit_result(claim: Claim, data: dict[str, Any]) -> Move:
    """Commit the result of a step that ran outside the commit's transaction.

    Its result is in hand, so a connection lost on the way does not fail the attempt:
    the commit is tried once more on a fresh connection. Being conditional on the
    claim, it cannot apply twice; if the first one did apply (only its acknowledgement
    was lost), the step's history row says so and the job carries on from there.
    """
    try:
        moved = commit(claim, data)
        points.fire("commit_ack", **claim.context())
        return moved
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        logger.warning(
            "Sequence %s step %s: the commit lost its connection; once more.",
            claim.record.pk, claim.record.step_index,
        )  # fmt: skip
        connection.close()
    try:
        return commit(claim, data)
    except StepFenced:
        record = claim.record
        done = StepAttempt.objects.filter(
            sequence_id=record.pk, step_index=record.step_index, epoch=record.epoch,
            attempt=record.attempt, outcome=Outcome.SUCCEEDED,
        )  # fmt: skip
        if not done.exists():
            raise
        claim.settled = True
        row = SequenceRecord.objects.filter(pk=record.pk).values_list("status", "epoch").first()
        now = Status(row[0]) if row is not None else Status.CANCELED
        # Moved on to the next step or completed it: the commit saw the step running (or
        # paused, for a last step). Paused or canceled since (or then), the request that
        # did it announced itself, and nothing is to be queued.
        moved_on = TRANSITIONS["commit"][Status.RUNNING]
        if row is not None and row[1] == record.epoch + 1 and now in moved_on:
            return Move(Status.RUNNING, now)
        return Move(now, now)


def _commit_running(claim: Claim, data: dict[str, Any]) -> bool:
    """The usual commit of a running step, with its history row; False if not running.

    The same conditions and changes as the ORM update in ``_commit_held``, written out
    for speed. On PostgreSQL the history row is inserted by the same statement (a
    data-modifying ``WITH``), which needs no transaction block: one round trip. SQLite
    has no such ``WITH``: there it is an ``UPDATE`` and an ``INSERT`` in one transaction.
    """
    record = claim.record
    last = record.step_index + 1 >= len(record.plan)
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    now = now_sql()
    running_sql, running_args = status_in(sources("commit"))
    deadline, deadline_args = "", list[Any]()
    if claim.timeout > 0:
        started_after, arg = now_plus_sql(-claim.timeout)
        deadline, deadline_args = f" AND claimed_at > {started_after}", [arg]
    sql = f"""
        UPDATE {table}
        SET status = %s, dispatch_due = {"NULL" if last else now},
            finished_at = {now if last else "NULL"}, data = %s, step_index = %s, epoch = %s,
            claim_token = NULL, claimed_by = '', claimed_at = NULL, lease_until = NULL,
            attempt = 0, recoveries = 0, error = '', updated_at = {now}
        WHERE id = %s AND epoch = %s AND claim_token = %s AND {running_sql}
            AND lease_until > {now}{deadline}
    """
    params: list[Any] = [
        Status.COMPLETED if last else Status.PENDING,
        SequenceRecord._meta.get_field("data").get_db_prep_save(data, connection),
        record.step_index + 1, record.epoch + 1,
        record.pk, record.epoch, claim.token, *running_args, *deadline_args,
    ]  # fmt: skip
    entry = claim.entry(Outcome.SUCCEEDED, data=data)
    if connection.vendor == "postgresql":
        insert, fields = history.insert_sql(select_from="moved")
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH moved AS ({sql} RETURNING id) {insert}",
                params + history.params(entry, fields),
            )
            return bool(cursor.rowcount)
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if not cursor.rowcount:
                return False
        history.write(entry)
    return True


def _commit_held(claim: Claim, data: dict[str, Any]) -> Status:
    """The commit of a step whose sequence was paused or canceled while it ran; returns
    which of the two it found.

    Keeps the result and starts nothing (a paused last step completes the sequence).
    Raises if the claim is no longer good: its deadline passed, or it was taken.
    """
    record = claim.record
    last = record.step_index + 1 >= len(record.plan)
    live = claim.mine().filter(lease_until__gt=Now())
    if claim.timeout > 0:
        live = live.filter(claimed_at__gt=ago(claim.timeout))
    if live.filter(status__in=sources("commit_held")).update(
        status=Case(
            When(status=Status.PAUSED, then=Value(Status.COMPLETED if last else Status.PAUSED)),
            default=F("status"),
        ),
        dispatch_due=None,
        finished_at=Case(
            When(status=Status.PAUSED, then=Now() if last else None), default=F("finished_at")
        ),
        data=data,
        step_index=record.step_index + 1,
        epoch=record.epoch + 1,
        attempt=0,
        recoveries=0,
        error="",
        updated_at=Now(),
        **RELEASED,
    ):
        # The row is locked by that update until the transaction ends: it reads as left.
        now = SequenceRecord.objects.filter(pk=record.pk).values_list("status", flat=True).get()
        return Status.CANCELED if now == Status.CANCELED else Status.PAUSED
    if claim.mine().exists():
        # Still ours, so the lease or the deadline ran out: a failed attempt.
        raise StepDeadlineExceeded(
            f"step {record.step_index} reached the database after its deadline "
            f"(timeout {claim.timeout}s); its result is not committed."
        )
    raise StepFenced(
        f"step {record.step_index} lost its claim (taken over, or the sequence was "
        "retried or recovered); its result is discarded."
    )


# -- failure and giving a claim up ----------------------------------------------------------


def fail(
    claim: Claim,
    error: str,
    tb: str = "",
    *,
    will_retry: bool,
    undo_from: Position | None = None,
    summary: str = "",
) -> Status | None:
    """Record a failed attempt: retrying, or failed for good, or (paused or canceled
    meanwhile) only released. The attempt's row keeps ``error``; the sequence's shows
    ``summary`` if given (naming the step).

    Failed for good with ``undo_from`` (the last completed step that has an undo), the
    sequence is compensating from there, under a new epoch, its first compensation due.
    Returns the status the sequence now has, or None if the claim was no longer ours.
    """
    released = {**RELEASED, "error": summary or error}
    with transaction.atomic():
        status: Status | None = None
        if will_retry:
            if (
                claim.mine()
                .filter(status__in=sources("fail", Status.RETRYING))
                .update(status=Status.RETRYING, updated_at=Now(), **released)
            ):
                status = Status.RETRYING
        elif undo_from is not None:
            if claim.mine().filter(status__in=sources("fail", Status.COMPENSATING)).update(
                **compensating(undo_from, Status.FAILED), updated_at=Now(), **released,
            ):  # fmt: skip
                status = Status.COMPENSATING
        elif (
            claim.mine()
            .filter(status__in=sources("fail", Status.FAILED))
            .update(status=Status.FAILED, finished_at=Now(), updated_at=Now(), **released)
        ):
            status = Status.FAILED
        if status is None:
            # Paused or canceled meanwhile: keep that status, but release the claim.
            row = claim.mine().values_list("status", flat=True).first()
            if row is None or not claim.mine().update(updated_at=Now(), **released):
                claim.settled = True
                return None
            status = Status(row)
        history.write(claim.entry(Outcome.FAILED, error, tb))
    claim.settled = True
    claim.retrying = status == Status.RETRYING
    return status


def release(claim: Claim, error: str) -> bool:
    """Give up a claim without a result; True if the step is due again (queue it).

    Running: the step is due again under a new epoch. Paused or canceled: the claim is
    dropped and the status kept (resume queues the step again). Not ours any more:
    nothing changes.
    """
    due = False
    with transaction.atomic():
        if claim.mine().filter(status__in=sources("release", Status.RETRYING)).update(
            status=Status.RETRYING, epoch=F("epoch") + 1, dispatch_due=Now(),
            updated_at=Now(), error=error, **RELEASED,
        ):  # fmt: skip
            due = True
        elif not claim.mine().update(updated_at=Now(), **RELEASED):
            claim.settled = True
            return False
        history.write(claim.entry(Outcome.FAILED, error))
    claim.settled = True
    return due
