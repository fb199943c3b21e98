"""A claim: the step a job took, the token that fences it, and the clocks it is read by.

The statements that take, commit and give up a claim are the state machine's
(``sequence.engine.transitions``); this is what they share with the runner: the claim as the
job holds it, how long its lease lasts, and the database clock as SQL.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import connection
from django.db.models import QuerySet

from sequence.declare.conf import settings
from sequence.engine import history
from sequence.models import SequenceRecord

if TYPE_CHECKING:
    from sequence.engine.inline import Inline


def now_sql() -> str:
    if connection.vendor == "postgresql":
        # Not CURRENT_TIMESTAMP: that is the transaction's start, not the statement's.
        return "STATEMENT_TIMESTAMP()"
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


def now_plus_sql(seconds: int) -> tuple[str, Any]:
    """The database clock ``seconds`` from now (negative: ago), and its parameter."""
    if connection.vendor == "postgresql":
        return f"{now_sql()} + %s * INTERVAL '1 second'", seconds
    return "strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %s)", f"{seconds:+d} seconds"


@dataclass(kw_only=True)
class Claim:
    """A step taken by this process: what the job runs on, and the token fencing it."""

    record: SequenceRecord
    token: str
    worker: str
    started_at: datetime
    timeout: int
    # time.monotonic() after which a step's result may not be committed.
    deadline: float = float("inf")
    # time.time() at which RQ's timeout fires (it counts from RQ's job.started_at).
    wall_deadline: float = float("inf")
    # True once the claim was committed, failed or released (or found not ours).
    settled: bool = False
    # True once a failed attempt was recorded with a retry to come.
    retrying: bool = False
    # True once a failed attempt was its last before RQ's retries ran out (Fail, or an
    # error Retry.on leaves out): RQ must not retry the job.
    final: bool = False
    # Set when the unit is a compensation: the plan index it undoes (else the step's).
    undo_index: int | None = None
    # ... and, in a ForEach, the element whose compensation this is.
    undo_item: int | None = None
    # The data as the claim read it (its JSON text), which the commit's change is of.
    loaded: str | dict[str, Any] | None = None

    @property
    def index(self) -> int:
        """The plan index of the unit this claim runs."""
        return self.record.step_index if self.undo_index is None else self.undo_index

    @property
    def lease_seconds(self) -> int:
        return lease_seconds(self.timeout)

    def mine(self) -> QuerySet[SequenceRecord]:
        """The row as long as this claim holds it."""
        r = self.record
        return SequenceRecord.objects.filter(pk=r.pk, epoch=r.epoch, claim_token=self.token)

    def context(self, **extra: Any) -> dict[str, Any]:
        """What a test point sees of this claim."""
        r = self.record
        return {
            "sequence": r.pk, "step": self.index, "epoch": r.epoch,
            "attempt": r.attempt, "worker": self.worker, **extra,
        }  # fmt: skip

    def entry(
        self, outcome: str, error: str = "", tb: str = "", *, data: dict[str, Any] | None = None
    ) -> history.Entry:
        """The history row of this attempt, ending with ``outcome`` (and, committing
        ``data``, the change it made to the data as loaded)."""
        r = self.record
        return history.Entry(
            sequence_id=r.pk, step_index=self.index, step=r.plan[self.index], epoch=r.epoch,
            attempt=r.attempt, outcome=outcome, started_at=self.started_at, worker=self.worker,
            error=error, traceback=tb, item=self.undo_item,
            changes={} if data is None else history.changes(self.loaded, data),
        )  # fmt: skip


def lease_seconds(timeout: int) -> int:
    """How long a claim on a step with this timeout holds (database clock)."""
    return (timeout if timeout > 0 else settings.TIMEOUT) + settings.LEASE_MARGIN


@dataclass(frozen=True)
class Execution:
    """Who runs the job in this context: the worker's name and the claim token to use.

    Set by sequence's worker classes (the token is RQ's execution id, which the worker
    process also knows, so it can release the claim of a work-horse that died).
    """

    worker: str
    token: str | None = None
    # Lent by SequenceWorker: what lets the runner run the next steps in the same job.
    inline: Inline | None = None
    # Retries left when no RQ job carries them (``sequence.testing.drain``).
    retries_left: int = 0


execution: ContextVar[Execution | None] = ContextVar("sequence_execution", default=None)


class _Timeout:
    """Set by sequence's worker classes when RQ's job timeout fires in this process."""

    fired = False


job_timeout = _Timeout()


@dataclass(frozen=True, kw_only=True)
class Taker:
    """Who takes a unit: the worker, the claim token fencing it, the job's timeout (the
    lease outlasts it), and when the job began (``time.monotonic()``: the step's deadline
    counts from it)."""

    worker: str
    token: str
    timeout: int
    entered: float

    @property
    def deadline(self) -> float:
        return self.entered + self.timeout if self.timeout > 0 else float("inf")
