"""Statuses of a sequence and the one table of transitions allowed between them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    QUEUED = "queued", _("Queued")  # waits for a place under its Concurrency
    PENDING = "pending", _("Pending")  # a step is queued
    RUNNING = "running", _("Running")  # a step is executing
    RETRYING = "retrying", _("Retrying")  # an attempt failed; RQ will run it again
    SLEEPING = "sleeping", _("Sleeping")  # a Sleep counts down to wake_at
    WAITING = "waiting", _("Waiting")  # a WaitFor waits for its event (or its timeout)
    PAUSED = "paused", _("Paused")  # no step starts until resumed
    COMPENSATING = "compensating", _("Compensating")  # completed steps are being undone
    COMPLETED = "completed", _("Completed")  # every step committed
    FAILED = "failed", _("Failed")  # a step ran out of retries
    CANCELED = "canceled", _("Canceled")  # stopped on request


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
ACTIVE = frozenset({Status.PENDING, Status.RUNNING, Status.RETRYING})
# Statuses in which the sequence waits on the clock or the outside world.
ASLEEP = frozenset({Status.SLEEPING, Status.WAITING})
# Statuses in which a job for the current step should be in RQ (queued, scheduled...).
QUEUED = frozenset({Status.PENDING, Status.RETRYING})
# Statuses in which, with no claim held, a job (a step's or a compensation's) is due.
MOVING = QUEUED | {Status.COMPENSATING}
# Statuses in which a ForEach's elements may start (pause and cancel stop new ones).
FANNING = frozenset({Status.RUNNING})
# Paused or canceled while a step ran: its result is kept, nothing further starts.
HELD = frozenset({Status.PAUSED, Status.CANCELED})

# action -> {from status: the statuses it may lead to}. Every status change is one of
# these, made by a conditional UPDATE in sequence.engine.transitions whose WHERE clause names
# the "from" statuses, so two changes racing each other cannot both apply to one row.
#
# Asked for by people and code (sequence.engine.steering): pause, resume, cancel, retry.
# Made by running a step (sequence.runner) and by the sweep (sequence.engine.recovery): the rest.
Transitions = dict[str, dict[Status, frozenset[Status]]]


def _table() -> Transitions:
    P, R, T, Z = Status.PENDING, Status.RUNNING, Status.RETRYING, Status.PAUSED
    C, F, X, K = Status.COMPLETED, Status.FAILED, Status.CANCELED, Status.COMPENSATING
    S, W, Q = Status.SLEEPING, Status.WAITING, Status.QUEUED
    return {
        # A start saves its row pending, or queued when its Concurrency key is full (no
        # row is there before: not an UPDATE, listed for the table's completeness).
        "start": {},
        # A place frees under the sequence's Concurrency: the first queued one of that
        # key is pending, its first step queued (a retried one waits for its place too).
        "admit": {Q: frozenset({P})},
        "pause": {
            Q: frozenset({Z}),
            P: frozenset({Z}),
            R: frozenset({Z}),
            T: frozenset({Z}),
            S: frozenset({Z}),
            W: frozenset({Z}),
        },
        # To running while the step in flight still holds its claim (it commits and
        # queues its successor itself); back to sleeping or waiting while the Sleep or
        # WaitFor it was paused in still counts down; to pending, with the next step
        # queued, otherwise; queued again if it was paused before it had a place.
        "resume": {Z: frozenset({R, P, S, W, Q})},
        # With compensate=True, to compensating first when a completed step has an undo.
        "cancel": {
            Q: frozenset({X}),
            P: frozenset({X, K}),
            R: frozenset({X, K}),
            T: frozenset({X, K}),
            Z: frozenset({X, K}),
            S: frozenset({X, K}),
            W: frozenset({X, K}),
        },
        # Under a Concurrency, queued first: a failed sequence gave its place up.
        "retry": {F: frozenset({P, Q})},
        # retry(from_step=...): onto the class's current plan, from the named step.
        "rewind": {F: frozenset({P, Q}), Z: frozenset({P, Q})},
        # A job takes its queued or retrying step; a failed one only when its RQ job was
        # requeued by hand. A running step is never claimed again: only the sweep takes
        # it over, so that recoveries are counted.
        "claim": {P: frozenset({R}), T: frozenset({R}), F: frozenset({R})},
        # A job takes back its own claim (same token) whose acknowledgement was lost.
        "reclaim": {R: frozenset({R})},
        # A running step extends its lease; anything else tells it to stop.
        "heartbeat": {R: frozenset({R}), K: frozenset({K})},
        # A running step's result is saved: the next step is due, or the sequence is done.
        # A Sleep's or WaitFor's own commit starts the countdown or the wait.
        "commit": {R: frozenset({P, C, S, W})},
        # Paused or canceled meanwhile: the result is kept and nothing further starts (a
        # paused sequence whose last step commits is completed).
        "commit_held": {Z: frozenset({Z, C}), X: frozenset({X})},
        # An attempt raised: retrying if it is retried, else failed, or compensating first
        # when a completed step has an undo.
        "fail": {R: frozenset({T, F, K}), Z: frozenset({Z, F, K}), X: frozenset({X})},
        # A Sleep's time came, a WaitFor's event was consumed, or its timeout said go on:
        # the next step is due (or the sequence is done).
        "wake": {S: frozenset({P, C}), W: frozenset({P, C})},
        # A person asks a sleeping sequence to wake now: its wake-up time becomes now.
        "wake_now": {S: frozenset({S})},
        # A WaitFor's timeout with on_timeout="fail": failed, or compensating first.
        "time_out": {W: frozenset({F, K})},
        # A ForEach begins: its elements start while the sequence runs (a paused one's when
        # it is resumed); the sequence keeps its status.
        "fan_out": {R: frozenset({R}), Z: frozenset({Z})},
        # Every element of the ForEach succeeded: the next step is due, or the sequence is
        # done (paused or canceled meanwhile: it keeps that status, past the ForEach).
        "fan_in": {R: frozenset({P, C}), Z: frozenset({Z}), X: frozenset({X})},
        # A job takes the compensation the walk is at (compensating stays compensating).
        "compensate": {K: frozenset({K})},
        # A compensation ended (done, or failed for good): the walk goes on, or the
        # sequence ends as it was going to (failed, or canceled).
        "undo": {K: frozenset({K, F, X})},
        # A claim given up without a result: the step is queued again (paused or canceled:
        # only the claim is dropped).
        "release": {R: frozenset({T}), Z: frozenset({Z}), X: frozenset({X}), K: frozenset({K})},
        # The sweep: a lost claim is retried (or failed past SEQUENCE_MAX_RECOVERIES); a lost
        # dispatch is queued again under a new epoch; a paused or canceled sequence whose
        # worker died only gets its claim released.
        "recover": {
            R: frozenset({T, F, K}),
            P: frozenset({P}),
            T: frozenset({T}),
            Z: frozenset({Z}),
            X: frozenset({X}),
            K: frozenset({K}),
        },
    }


TRANSITIONS: Transitions = _table()

# action -> statuses in which asking again changes nothing (no error, no signal).
IDEMPOTENT: dict[str, frozenset[Status]] = {
    "pause": frozenset({Status.PAUSED}),
    "resume": ACTIVE | ASLEEP | {Status.QUEUED},
    "cancel": frozenset({Status.CANCELED}),
    "retry": frozenset(),
}

# The actions a person may ask for, in the order the admin and the command show them.
REQUESTS = ("pause", "resume", "cancel", "retry")


def sources(
    action: str,
    target: str | None = None,
    *,
    of: Mapping[str, Mapping[Any, frozenset[Any]]] | None = None,
) -> frozenset[Any]:
    """The statuses ``action`` may start from (those from which it may reach ``target``),
    in the sequences' table, or ``of=ITEM_TRANSITIONS``, the elements'."""
    table = (TRANSITIONS if of is None else of)[action]
    if target is None:
        return frozenset(table)
    return frozenset(source for source, targets in table.items() if target in targets)


def allows(action: str, source: str, target: str) -> bool:
    """Whether ``action`` may move a sequence from ``source`` to ``target``."""
    return target in TRANSITIONS[action].get(Status(source), frozenset())


def available(status: str) -> list[str]:
    """The requested actions that would change a sequence in ``status``."""
    return [action for action in REQUESTS if Status(status) in TRANSITIONS[action]]


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", _("Succeeded")  # committed; the sequence moved on
    FAILED = "failed", _("Failed")  # raised; retried if retries were left
    LOST = "lost", _("Lost")  # the worker died or the job vanished; recovered
    COMPENSATED = "compensated", _("Compensated")  # compensate() ran after a failure
    COMPENSATION_FAILED = "compensation_failed", _("Compensation failed")
    # Not attempts: rows that say how the data changed between them.
    RECEIVED = "received", _("Event received")  # a WaitFor merged its event's data
    EDITED = "edited", _("Data edited")  # a person's corrections, merged by a retry


# -- a ForEach's elements -------------------------------------------------------------------


class ItemStatus(models.TextChoices):
    PENDING = "pending", _("Pending")  # not started: waits for a place (concurrency)
    QUEUED = "queued", _("Queued")  # its job is queued
    RUNNING = "running", _("Running")  # a worker holds it
    RETRYING = "retrying", _("Retrying")  # an attempt failed; RQ runs it again
    DONE = "done", _("Done")  # committed, its result stored
    FAILED = "failed", _("Failed")  # failed for good
    UNDONE = "undone", _("Compensated")  # done, then compensated after a failure


# Elements a worker holds or will run again: while one is, the ForEach is not over.
IN_FLIGHT = frozenset({ItemStatus.RUNNING, ItemStatus.RETRYING})


def _item_table() -> dict[str, dict[ItemStatus, frozenset[ItemStatus]]]:
    P, Q, R, T = ItemStatus.PENDING, ItemStatus.QUEUED, ItemStatus.RUNNING, ItemStatus.RETRYING
    D, F, U = ItemStatus.DONE, ItemStatus.FAILED, ItemStatus.UNDONE
    return {
        # The ForEach begins (again, after a retry or a resume of its step): every
        # element not done starts over.
        "begin": {s: frozenset({P}) for s in (P, Q, R, T, F, U)},
        # A place is free: the next element not started gets it, its job queued.
        "queue": {P: frozenset({Q})},
        # No further element starts (one failed for good): those queued give back
        # their places.
        "hold": {Q: frozenset({P})},
        # A job takes its queued or retrying element.
        "claim": {Q: frozenset({R}), T: frozenset({R})},
        # A job takes back its own claim (same token) whose acknowledgement was lost.
        "reclaim": {R: frozenset({R})},
        # The element's result is stored.
        "commit": {R: frozenset({D})},
        # An attempt raised: retried by RQ, or failed for good.
        "fail": {R: frozenset({T, F})},
        # The sweep: a lost element is queued again, or failed past
        # SEQUENCE_MAX_RECOVERIES.
        "recover": {Q: frozenset({Q, F}), R: frozenset({Q, F}), T: frozenset({Q, F})},
        # A done element is compensated in the walk after a failure.
        "compensate": {D: frozenset({U})},
    }


ITEM_TRANSITIONS = _item_table()


def only(action: str, *, of: Mapping[str, Mapping[Any, frozenset[Any]]]) -> Any:
    """The one status ``action`` starts from, for a statement that names a single one."""
    (status,) = sources(action, of=of)
    return status
