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

from sequence.engine.transitions import bulk, elements, fanout
from sequence.engine.transitions.base import RELEASED
from sequence.engine.transitions.requests import ROUNDS, cancel, pause, resume, retry, rewind
from sequence.engine.transitions.step import claim, commit, commit_result, fail, heartbeat, release
from sequence.engine.transitions.sweep import recover
from sequence.engine.transitions.waits import commit_wait, time_out, wake, wake_now
from sequence.engine.transitions.walk import claim_undo, undo_done, undo_failed

__all__ = [
    "RELEASED",
    "ROUNDS",
    "bulk",
    "cancel",
    "claim",
    "claim_undo",
    "commit",
    "commit_result",
    "commit_wait",
    "elements",
    "fail",
    "fanout",
    "heartbeat",
    "pause",
    "recover",
    "release",
    "resume",
    "retry",
    "rewind",
    "time_out",
    "undo_done",
    "undo_failed",
    "wake",
    "wake_now",
]
