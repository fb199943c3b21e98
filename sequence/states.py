"""Statuses of a sequence and the transitions allowed between them."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Status(models.TextChoices):
    PENDING = "pending", _("Pending")  # a step is queued
    RUNNING = "running", _("Running")  # a step is executing
    RETRYING = "retrying", _("Retrying")  # an attempt failed; RQ will run it again
    PAUSED = "paused", _("Paused")  # no step starts until resumed
    COMPLETED = "completed", _("Completed")  # every step committed
    FAILED = "failed", _("Failed")  # a step ran out of retries
    CANCELED = "canceled", _("Canceled")  # stopped on request


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})
ACTIVE = frozenset({Status.PENDING, Status.RUNNING, Status.RETRYING})

# action -> statuses it may start from. Where the status already matches, the
# action is a no-op (see IDEMPOTENT); anything else raises InvalidTransition.
TRANSITIONS: dict[str, frozenset[Status]] = {
    # A queued job may take its step.
    "claim": frozenset({Status.PENDING, Status.RETRYING}),
    "pause": ACTIVE,
    "resume": frozenset({Status.PAUSED}),
    "cancel": ACTIVE | {Status.PAUSED},
    "retry": frozenset({Status.FAILED}),
}

# action -> statuses in which asking again changes nothing.
IDEMPOTENT: dict[str, frozenset[Status]] = {
    "claim": frozenset(),
    "pause": frozenset({Status.PAUSED}),
    "resume": ACTIVE,
    "cancel": frozenset({Status.CANCELED}),
    "retry": frozenset(),
}


class Outcome(models.TextChoices):
    SUCCEEDED = "succeeded", _("Succeeded")  # committed; the sequence moved on
    FAILED = "failed", _("Failed")  # raised; retried if retries were left
    LOST = "lost", _("Lost")  # the worker died or the job vanished; recovered
    COMPENSATED = "compensated", _("Compensated")  # compensate() ran after a failure
    COMPENSATION_FAILED = "compensation_failed", _("Compensation failed")
