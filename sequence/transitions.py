"""The state machine: every change of a sequence's status, each one conditional UPDATE.

Each statement names, in its WHERE clause, the statuses ``states.TRANSITIONS`` lets its
action start from, and the fence it needs (the epoch, the claim token, the lease): of
two changes racing each other exactly one applies, and no lock is held while a step
runs. Nothing here queues a job or sends a signal: a statement reports what it changed,
and its caller (the runner, the sweep, the steering requests) acts on that after commit.

The statements on every step's path (the claim and the commit) are hand-written SQL.
The claim needs the row back from its ``UPDATE`` (``RETURNING``), which
``QuerySet.update()`` does not give, and on PostgreSQL it skips the WAL flush. Building
the commit through the ORM cost about 1 ms of CPU per step (py-spy, bench/), the largest
share of sequence's own work in a step; on PostgreSQL it and its history row are one
statement. The rarer statements use the ORM.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, F, QuerySet, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from sequence import history, points
from sequence.claims import Claim, lease_seconds, now_plus_sql, now_sql
from sequence.conf import settings
from sequence.exceptions import InvalidTransition, StepDeadlineExceeded, StepFenced
from sequence.models import SequenceRecord, StepAttempt, ago
from sequence.states import IDEMPOTENT, TERMINAL, TRANSITIONS, Outcome, Status, sources

logger = logging.getLogger("sequence")

# A claim given up: no holder, no lease.
RELEASED = {"claim_token": None, "claimed_by": "", "claimed_at": None, "lease_until": None}


def _rows(action: str, pk: int | str, target: Status | None = None) -> QuerySet[SequenceRecord]:
    """The row, if it is in a status ``action`` may start from (to reach ``target``)."""
    return SequenceRecord.objects.filter(pk=pk, status__in=sources(action, target))


def _status_in(statuses: frozenset[Status]) -> tuple[str, list[Any]]:
    """``status IN (...)`` for raw SQL, with its parameters."""
    ordered = sorted(statuses)
    return f"status IN ({', '.join(['%s'] * len(ordered))})", list(ordered)


# -- the claim ----------------------------------------------------------------------------


def claim(
    sequence_id: int,
    step_index: int,
    epoch: int,
    worker: str,
    token: str,
    timeout: int,
    entered: float,
    *,
    failed: bool = False,
) -> Claim | None:
    """Take the step if the row still expects it; None if the job is stale.

    A claim takes a queued or retrying step (with ``failed``, a failed one whose RQ job
    was requeued by hand), or this job's own claim (same token) whose acknowledgement a
    lost connection ate.

    A connection lost before the claim is tried once more on a fresh connection; if the
    database stays out of reach, the error goes to the caller.
    """
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    now = now_sql()
    lease, lease_arg = now_plus_sql(lease_seconds(timeout))
    relaxed = ""
    if connection.vendor == "postgresql":
        # The claim's commit does not wait for the WAL flush: a claim lost in a crash
        # of PostgreSQL only makes the step claimable again, and the step's own commit
        # (synchronous, later in the same WAL) makes the claim durable before it.
        relaxed = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"
    takes = sources("claim") & TERMINAL if failed else sources("claim") - TERMINAL
    takes_sql, takes_args = _status_in(takes)
    own_sql, own_args = _status_in(sources("reclaim"))
    sql = f"""
        UPDATE {table}
        SET status = %s, claim_token = %s, claimed_by = %s, claimed_at = {now},
            lease_until = {lease}, dispatch_due = NULL, updated_at = {now},
            attempt = attempt + CASE WHEN claim_token = %s THEN 0 ELSE 1 END
        {relaxed}
        WHERE id = %s AND epoch = %s AND step_index = %s
            AND ({takes_sql} OR ({own_sql} AND claim_token = %s))
        RETURNING name, data, plan, version, queue, attempt
    """
    params: list[Any] = [
        Status.RUNNING, token, worker[:200], lease_arg, token,
        sequence_id, epoch, step_index, *takes_args, *own_args, token,
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
    name, data, plan, version, queue, attempt = row
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
    )
    deadline = entered + timeout if timeout > 0 else float("inf")
    return Claim(record, token, worker, timezone.now(), deadline, timeout)


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


def commit(claim: Claim, data: dict[str, Any]) -> str:
    """Save the data and move to the next step; return the status it moved from.

    Conditional on the claim (epoch and token), on its lease and on the step's deadline,
    all read from the database's clock when the statement runs. It joins the caller's
    transaction (an ``atomic`` step's), or makes its own.
    """
    if _commit_running(claim, data):
        claim.settled = True
        return Status.RUNNING
    with transaction.atomic(savepoint=False):
        _commit_held(claim, data)
        history.write(claim.entry(Outcome.SUCCEEDED))
    claim.settled = True
    return Status.PAUSED


def commit_result(claim: Claim, data: dict[str, Any]) -> str:
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
        # Moved on to the next step: the commit saw the step running. Otherwise it found
        # the sequence paused or canceled, and nothing is to be queued.
        moved_on = TRANSITIONS["commit"][Status.RUNNING]
        if row is not None and row[1] == record.epoch + 1 and row[0] in moved_on:
            return Status.RUNNING
        return Status.PAUSED


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
    running_sql, running_args = _status_in(sources("commit"))
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
    entry = claim.entry(Outcome.SUCCEEDED)
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


def _commit_held(claim: Claim, data: dict[str, Any]) -> None:
    """The commit of a step whose sequence was paused or canceled while it ran.

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
        return
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


def fail(claim: Claim, error: str, tb: str = "", *, will_retry: bool) -> Status | None:
    """Record a failed attempt: retrying, failed, or (paused or canceled) only released.

    Returns the status the sequence now has, or None if the claim was no longer ours.
    """
    released = {**RELEASED, "error": error}
    with transaction.atomic():
        status: Status | None = None
        if will_retry:
            if (
                claim.mine()
                .filter(status__in=sources("fail", Status.RETRYING))
                .update(status=Status.RETRYING, updated_at=Now(), **released)
            ):
                status = Status.RETRYING
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


# -- the sweep ----------------------------------------------------------------------------


def recover(record: SequenceRecord, step: str, reason: str) -> str:
    """Move one stuck row on, if it is still as the sweep read it.

    Returns what happened: ``"redispatched"`` (due again under a new epoch: queue it),
    ``"failed"`` (its step was recovered SEQUENCE_MAX_RECOVERIES times), ``"released"``
    (paused or canceled: only the claim is dropped), or ``""`` (it moved meanwhile).
    Call it inside a transaction, and act on the answer once it commits.
    """
    lost_claim = record.claim_token is not None
    rows = SequenceRecord.objects.filter(pk=record.pk, epoch=record.epoch, status=record.status)
    rows = (
        rows.filter(claim_token=record.claim_token)
        if lost_claim
        else rows.filter(claim_token__isnull=True)
    )
    rows = rows.filter(status__in=sources("recover"))
    entry = history.Entry(
        record.pk, record.step_index, step, record.epoch, record.attempt, Outcome.LOST,
        record.claimed_at or record.updated_at, record.claimed_by,
    )  # fmt: skip
    if lost_claim and record.status in sources("recover", Status.FAILED):
        if record.recoveries >= settings.MAX_RECOVERIES:
            error = f"worker died during step {step} (recovered {record.recoveries} times)"
            # A new epoch fences RQ's own retries of the job that kept dying.
            if not rows.update(
                status=Status.FAILED, epoch=F("epoch") + 1, error=error, dispatch_due=None,
                finished_at=Now(), updated_at=Now(), **RELEASED,
            ):  # fmt: skip
                return ""
            history.write(_with_error(entry, error))
            return "failed"
    elif lost_claim:
        # Paused or canceled while its worker died: drop the claim, keep the status.
        if not rows.update(recoveries=F("recoveries") + 1, updated_at=Now(), **RELEASED):
            return ""
        history.write(
            _with_error(entry, f"{reason}; the step runs again when the sequence is resumed")
        )
        return "released"
    if not rows.update(
        status=Status.RETRYING if lost_claim else record.status,
        epoch=F("epoch") + 1,
        recoveries=F("recoveries") + (1 if lost_claim else 0),
        dispatch_due=Now(), updated_at=Now(), **RELEASED,
    ):  # fmt: skip
        return ""
    if lost_claim:
        history.write(_with_error(entry, f"{reason}; recovered ({record.recoveries + 1})"))
    return "redispatched"


def _with_error(entry: history.Entry, error: str) -> history.Entry:
    return history.Entry(**{**entry.__dict__, "error": error})


# -- requests: pause, resume, cancel, retry -------------------------------------------------

# A conditional update that found the row in another status re-reads it and tries
# again while that status is still one the action starts from: the row changed between
# the two statements. Each round means another request won a race, so few are needed.
ROUNDS = 5


def _refuse(action: str, record: SequenceRecord) -> SequenceRecord:
    """Return ``record`` if ``action`` is a no-op in its status; raise otherwise."""
    if record.status in IDEMPOTENT[action]:
        return record
    allowed = ", ".join(sorted(sources(action)))
    raise InvalidTransition(
        f"Cannot {action} {record}: it is {record.status}; {action} applies to a sequence "
        f"that is {allowed}."
    )


def _apply(
    action: str, sequence_id: int | str, update: Callable[[], int]
) -> tuple[SequenceRecord, bool]:
    """Run ``update`` until it changes the row or the row's status rules the action out.

    Returns the row as it is afterwards, and whether this call changed it.
    """
    for _ in range(ROUNDS):
        changed = update()
        record = SequenceRecord.objects.find(sequence_id)
        if changed:
            return record, True
        if record.status not in sources(action):
            return _refuse(action, record), False
    raise InvalidTransition(
        f"Cannot {action} {record}: its status kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row


def pause(sequence_id: int | str) -> tuple[SequenceRecord, bool]:
    """Stop after the step in flight; a queued job finds the sequence paused and ends."""
    return _apply(
        "pause",
        sequence_id,
        lambda: _rows("pause", sequence_id).update(status=Status.PAUSED, updated_at=Now()),
    )


def resume(sequence_id: int | str) -> tuple[SequenceRecord, bool]:
    """Running again if the step in flight still holds its claim, else pending (queue it)."""

    def update() -> int:
        # A step still in flight keeps its claim: it commits and queues its successor.
        if (
            _rows("resume", sequence_id, Status.RUNNING)
            .filter(claim_token__isnull=False)
            .update(status=Status.RUNNING, updated_at=Now())
        ):
            return 1
        return (
            _rows("resume", sequence_id, Status.PENDING)
            .filter(claim_token__isnull=True)
            .update(
                status=Status.PENDING, epoch=F("epoch") + 1, dispatch_due=Now(), updated_at=Now()
            )
        )

    return _apply("resume", sequence_id, update)


def cancel(sequence_id: int | str) -> tuple[SequenceRecord, bool]:
    """End the sequence ``canceled``."""
    return _apply(
        "cancel",
        sequence_id,
        lambda: _rows("cancel", sequence_id).update(
            status=Status.CANCELED, dispatch_due=None, finished_at=Now(), updated_at=Now()
        ),
    )


def retry(
    sequence_id: int | str, merge: Callable[[SequenceRecord], dict[str, Any]], epoch: int | None
) -> tuple[SequenceRecord, bool]:
    """Pending again with fresh attempts and the data ``merge`` makes of the row's.

    ``epoch`` refuses the retry if the sequence moved since that epoch was read.
    """
    for _ in range(ROUNDS):
        record = SequenceRecord.objects.find(sequence_id)
        if record.status not in sources("retry"):
            return _refuse("retry", record), False
        if epoch is not None and record.epoch != epoch:
            raise InvalidTransition(
                f"Cannot retry {record}: it changed since you loaded it; look again and retry."
            )
        data = merge(record)
        # Conditional on the epoch read above: data merged into a copy that changed
        # meanwhile is not written.
        same = _rows("retry", sequence_id).filter(epoch=record.epoch)
        if same.update(
            status=Status.PENDING, data=data, epoch=F("epoch") + 1, attempt=0,
            recoveries=0, error="", finished_at=None, dispatch_due=Now(), updated_at=Now(),
        ):  # fmt: skip
            return SequenceRecord.objects.find(sequence_id), True
    raise InvalidTransition(
        f"Cannot retry sequence {sequence_id}: it kept changing; try again."
    )  # pragma: no cover - needs ROUNDS lost races in a row
