"""The database side of a step: claim, heartbeat, commit, history row, release.

The claim takes the step's row under the job's token; every later statement is
conditional on that claim (the row's epoch and claim token), and leases and deadlines
are read from the database's clock. ``sequence.runner`` decides when each is made.

The statements on every step's path are hand-written SQL. The claim needs the row back
from its ``UPDATE`` (``RETURNING``), which ``QuerySet.update()`` does not give, and on
PostgreSQL it skips the WAL flush. Building the commit's ``UPDATE`` and the history
``INSERT`` through the ORM cost about 1 ms of CPU per step (py-spy, bench/), the largest
share of sequence's own work in a step; on PostgreSQL the two are one statement. The
rarer paths (a step paused or canceled while
it ran, the heartbeat, a release) use the ORM.

The test points are here too, since both this module and the runner pass them
(``sequence.runner`` re-exports ``test_points``; see ``sequence.testing``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Case, ExpressionWrapper, F, Value, When
from django.db.models import DateTimeField as DateTimeOutput
from django.db.models.functions import Now
from django.utils import timezone

from sequence.conf import settings
from sequence.dispatch import dispatch
from sequence.exceptions import StepDeadlineExceeded, StepFenced
from sequence.models import SequenceRecord, StepAttempt
from sequence.states import Outcome, Status

logger = logging.getLogger("sequence")

# Test points: named places in the protocol where tests crash or stall a worker.
# Empty in production; see sequence.testing.
test_points: dict[str, Callable[[Mapping[str, Any]], None]] = {}


def point(name: str, claim: Claim | None = None, **context: Any) -> None:
    """Run the action a test armed at ``name``, if any, with what the claim says."""
    if test_points:
        action = test_points.get(name)
        if action is not None:
            if claim is not None:
                record = claim.record
                context = {
                    "sequence": record.pk, "step": record.step_index, "epoch": record.epoch,
                    "attempt": record.attempt, "worker": claim.worker, **context,
                }  # fmt: skip
            action(context)


@dataclass
class Claim:
    """A step taken by this process: what the job runs on, and the token fencing it."""

    record: SequenceRecord
    token: str
    worker: str
    started_at: datetime
    deadline: float  # time.monotonic() after which the result may not be committed
    timeout: int
    # time.time() at which RQ's timeout fires (it counts from RQ's job.started_at).
    wall_deadline: float = float("inf")
    # True once the claim was committed, failed or released (or found not ours).
    settled: bool = False
    # True once a failed attempt was recorded with a retry to come.
    retrying: bool = False

    @property
    def lease_seconds(self) -> int:
        return lease_seconds(self.timeout)

    def mine(self) -> Any:
        """The row as long as this claim holds it."""
        r = self.record
        return SequenceRecord.objects.filter(pk=r.pk, epoch=r.epoch, claim_token=self.token)


def lease_seconds(timeout: int) -> int:
    """How long a claim on a step with this timeout holds (database clock)."""
    return (timeout if timeout > 0 else settings.TIMEOUT) + settings.LEASE_MARGIN


# Claims this process could not release because the database was unreachable; the
# worker's maintenance thread retries them (sequence.worker).
orphans: list[Claim] = []

RELEASED = {"claim_token": None, "claimed_by": "", "claimed_at": None, "lease_until": None}


def _now_sql() -> str:
    if connection.vendor == "postgresql":
        # Not CURRENT_TIMESTAMP: that is the transaction's start, not the statement's.
        return "STATEMENT_TIMESTAMP()"
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


def take(
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
    was requeued by hand). Never a running one: a step whose worker died is taken back
    by the sweep, under a new epoch, so that recoveries are counted. The one exception
    is this job's own claim (same token), whose acknowledgement a lost connection ate.

    A connection lost before the claim is tried once more on a fresh connection. If
    the database stays out of reach, the error goes to RQ, which retries the job; it
    gets back the retry it spends, since the step never started.
    """
    seconds = lease_seconds(timeout)
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    now = _now_sql()
    lease_arg: int | str
    if connection.vendor == "postgresql":
        lease, lease_arg = f"{now} + %s * INTERVAL '1 second'", seconds
        # The claim's commit does not wait for the WAL flush: a claim lost in a crash
        # of PostgreSQL only makes the step claimable again, and the step's own commit
        # (synchronous, later in the same WAL) makes the claim durable before it.
        relaxed = "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed"
    else:
        lease, lease_arg = "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)", f"+{seconds} seconds"
        relaxed = ""
    statuses = [Status.FAILED] if failed else [Status.PENDING, Status.RETRYING]
    placeholders = ", ".join(["%s"] * len(statuses))
    sql = f"""
        UPDATE {table}
        SET status = %s, claim_token = %s, claimed_by = %s, claimed_at = {now},
            lease_until = {lease}, dispatch_due = NULL, updated_at = {now},
            attempt = attempt + CASE WHEN claim_token = %s THEN 0 ELSE 1 END
        {relaxed}
        WHERE id = %s AND epoch = %s AND step_index = %s
            AND (status IN ({placeholders}) OR (status = %s AND claim_token = %s))
        RETURNING name, data, plan, version, queue, attempt
    """
    params: list[Any] = [
        Status.RUNNING, token, worker[:200], lease_arg, token,
        sequence_id, epoch, step_index, *statuses, Status.RUNNING, token,
    ]  # fmt: skip
    row = None
    for last_try in (False, True):
        try:
            point("before_claim", sequence=sequence_id, step=step_index, epoch=epoch)
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


def requeued_by_hand(job: Any) -> bool:
    """Whether this job was queued again after it failed for good (``rq requeue``).

    A failed sequence's step runs again only then: a duplicate of the failed job that
    was already queued when it failed must not run the step once more.
    """
    from rq.results import Result

    try:
        result = job.latest_result()
    except Exception:
        logger.exception("Could not read the results of job %s", job.id)
        return False
    if result is None or result.type != Result.Type.FAILED or job.enqueued_at is None:
        return False
    enqueued: datetime = job.enqueued_at
    if enqueued.tzinfo is None:
        enqueued = enqueued.replace(tzinfo=result.created_at.tzinfo)
    return bool(enqueued > result.created_at)


def heartbeat(claim: Claim) -> None:
    """Extend the claim's lease; StepFenced if the step no longer runs under it."""
    point("heartbeat", claim)
    lease = ExpressionWrapper(
        Now() + timedelta(seconds=claim.lease_seconds), output_field=DateTimeOutput()
    )
    if not claim.mine().filter(status=Status.RUNNING).update(lease_until=lease):
        raise StepFenced(
            f"Sequence {claim.record.pk} was paused, canceled or taken over; stop this step."
        )


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
        record_attempt(claim, Outcome.SUCCEEDED)
    claim.settled = True
    return Status.PAUSED


def _commit_held(claim: Claim, data: dict[str, Any]) -> None:
    """The commit of a step whose sequence was paused or canceled while it ran.

    Keeps the result and starts nothing (a paused last step completes the sequence).
    Raises if the claim is no longer good: its deadline passed, or it was taken.
    """
    record = claim.record
    last = record.step_index + 1 >= len(record.plan)
    live = claim.mine().filter(lease_until__gt=Now())
    if claim.timeout > 0:
        started_after = ExpressionWrapper(
            Now() - timedelta(seconds=claim.timeout), output_field=DateTimeOutput()
        )
        live = live.filter(claimed_at__gt=started_after)
    if live.filter(status__in=[Status.PAUSED, Status.CANCELED]).update(
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


def commit_result(claim: Claim, data: dict[str, Any]) -> str:
    """Commit the result of a step that ran outside the commit's transaction.

    Its result is in hand, so a connection lost on the way does not fail the attempt:
    the commit is tried once more on a fresh connection. Being conditional on the
    claim, it cannot apply twice; if the first one did apply (only its acknowledgement
    was lost), the step's history row says so and the job carries on from there.
    """
    try:
        moved = commit(claim, data)
        point("commit_ack", claim)
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
        if row in ((Status.PENDING, record.epoch + 1), (Status.COMPLETED, record.epoch + 1)):
            return Status.RUNNING
        return Status.PAUSED


def _commit_running(claim: Claim, data: dict[str, Any]) -> bool:
    """The usual commit of a running step, with its history row; False if not running.

    The same conditions and changes as the ORM update in ``_commit_held``, written out
    because building them through the ORM cost about 1 ms of CPU per step (py-spy,
    bench/), the largest share of sequence's own work in a step. On PostgreSQL the
    history row is inserted by the same statement (a data-modifying ``WITH``), which
    needs no transaction block: one round trip. SQLite has no such ``WITH``: there it is
    an ``UPDATE`` and an ``INSERT`` in one transaction.
    """
    record = claim.record
    last = record.step_index + 1 >= len(record.plan)
    table = connection.ops.quote_name(SequenceRecord._meta.db_table)
    now = _now_sql()
    deadline, deadline_args = "", list[Any]()
    if claim.timeout > 0:
        if connection.vendor == "postgresql":
            deadline = f" AND claimed_at > {now} - %s * INTERVAL '1 second'"
            deadline_args = [claim.timeout]
        else:
            deadline = " AND claimed_at > strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)"
            deadline_args = [f"-{claim.timeout} seconds"]
    sql = f"""
        UPDATE {table}
        SET status = %s, dispatch_due = {"NULL" if last else now},
            finished_at = {now if last else "NULL"}, data = %s, step_index = %s, epoch = %s,
            claim_token = NULL, claimed_by = '', claimed_at = NULL, lease_until = NULL,
            attempt = 0, recoveries = 0, error = '', updated_at = {now}
        WHERE id = %s AND epoch = %s AND claim_token = %s AND status = %s
            AND lease_until > {now}{deadline}
    """
    params: list[Any] = [
        Status.COMPLETED if last else Status.PENDING,
        SequenceRecord._meta.get_field("data").get_db_prep_save(data, connection),
        record.step_index + 1, record.epoch + 1,
        record.pk, record.epoch, claim.token, Status.RUNNING, *deadline_args,
    ]  # fmt: skip
    if connection.vendor == "postgresql":
        insert, fields = _attempt_insert(select_from="moved")
        with connection.cursor() as cursor:
            cursor.execute(
                f"WITH moved AS ({sql} RETURNING id) {insert}",
                params + _attempt_params(claim, fields, Outcome.SUCCEEDED),
            )
            return bool(cursor.rowcount)
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            if not cursor.rowcount:
                return False
        record_attempt(claim, Outcome.SUCCEEDED)
    return True


@cache
def _attempt_insert(select_from: str = "") -> tuple[str, list[Any]]:
    fields = [f for f in StepAttempt._meta.concrete_fields if not f.primary_key]
    table = connection.ops.quote_name(StepAttempt._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    if select_from:
        return f"INSERT INTO {table} ({columns}) SELECT {values} FROM {select_from}", fields
    return f"INSERT INTO {table} ({columns}) VALUES ({values})", fields


def record_attempt(claim: Claim, outcome: str, error: str = "", tb: str = "") -> None:
    """Record one attempt in the history (a plain INSERT: on every step's hot path)."""
    sql, fields = _attempt_insert()
    with connection.cursor() as cursor:
        cursor.execute(sql, _attempt_params(claim, fields, outcome, error, tb))


def _attempt_params(
    claim: Claim, fields: list[Any], outcome: str, error: str = "", tb: str = ""
) -> list[Any]:
    """The history row's values for ``fields``, ready for the database."""
    record = claim.record
    values = {
        "sequence_id": record.pk,
        "step_index": record.step_index,
        "step": record.plan[record.step_index],
        "epoch": record.epoch,
        "attempt": record.attempt,
        "outcome": outcome,
        "started_at": claim.started_at,
        "finished_at": timezone.now(),
        "worker": claim.worker,
        "error": error,
        "traceback": tb,
    }
    return [
        f.get_db_prep_save(
            values[f.attname] if f.attname in values else f.get_default(), connection
        )
        for f in fields
    ]


def release(claim: Claim, error: str) -> None:
    """Give up a claim without a result: the step runs again when the sequence may run.

    Used when the step stopped because its heartbeat was fenced (the sequence was paused
    or canceled) or when the runner could not finish the job. Paused or canceled: the
    claim is dropped and the status kept (resume queues the step again). Running: the
    step is queued again under a new epoch. Not ours any more: nothing to do.
    """
    from sequence.runner import spec_for

    record = claim.record
    with transaction.atomic():
        if claim.mine().filter(status=Status.RUNNING).update(
            status=Status.RETRYING, epoch=F("epoch") + 1, dispatch_due=Now(),
            updated_at=Now(), error=error, **RELEASED,
        ):  # fmt: skip
            spec = spec_for(record.name, record.plan, record.step_index)
            args = (record.pk, record.step_index, record.epoch + 1, record.queue, spec)
            transaction.on_commit(lambda: dispatch(*args), robust=True)
        elif not claim.mine().update(updated_at=Now(), **RELEASED):
            claim.settled = True
            return
        record_attempt(claim, Outcome.FAILED, error)
    claim.settled = True


def release_or_remember(claim: Claim) -> None:
    """Release the claim, or leave it to the worker to release once the database is back."""
    try:
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        release(claim, "the worker could not finish the job; the step runs again")
    except Exception:
        logger.exception(
            "Sequence %s: could not release the claim on step %s; retrying in the background.",
            claim.record.pk, claim.record.step_index,
        )  # fmt: skip
        orphans.append(claim)


def release_orphans() -> None:
    """Release the claims this process could not release earlier (database back)."""
    while orphans:
        claim = orphans[0]
        release(claim, "the worker could not finish the job; the step runs again")
        orphans.pop(0)
