"""The rows beside a sequence's record: its attempts, its ForEach elements, the events
sent to it, the liveness beats of the workers that run it, and the locks of the
``Concurrency`` keys."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from sequence.engine.states import ItemStatus, Outcome
from sequence.models.records import SequenceRecord


class StepAttempt(models.Model):
    """One attempt at one step (or one compensation), as it ended."""

    sequence = models.ForeignKey(SequenceRecord, on_delete=models.CASCADE, related_name="attempts")
    step_index = models.PositiveIntegerField(_("step index"))
    step = models.CharField(_("step"), max_length=200)
    epoch = models.PositiveBigIntegerField(_("epoch"))
    attempt = models.PositiveIntegerField(_("attempt"))
    outcome = models.CharField(_("outcome"), max_length=24, choices=Outcome.choices)
    started_at = models.DateTimeField(_("started"))
    finished_at = models.DateTimeField(_("finished"))
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    # A ForEach element's attempt: the element's position (None for a step).
    item = models.PositiveIntegerField(_("element"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    # What the attempt changed in the data: {"added": ..., "changed": ..., "removed": ...}.
    changes = models.JSONField(_("changes"), default=dict, blank=True)

    class Meta:
        db_table = "sequence_attempt"
        verbose_name = _("step attempt")
        verbose_name_plural = _("step attempts")
        ordering = ["id"]
        indexes = [models.Index(fields=["sequence", "id"], name="sequence_attempt_seq_idx")]

    def __str__(self) -> str:
        return f"{self.step} attempt {self.attempt}: {self.outcome}"

    @property
    def duration(self) -> Any:
        return self.finished_at - self.started_at


class SequenceItem(models.Model):
    """One element of a ForEach: a unit of work of its own, with its own claim."""

    sequence = models.ForeignKey(SequenceRecord, on_delete=models.CASCADE, related_name="items")
    step_index = models.PositiveIntegerField(_("step index"))
    index = models.PositiveIntegerField(_("position"))
    status = models.CharField(
        _("status"), max_length=16, choices=ItemStatus.choices, default=ItemStatus.PENDING
    )
    attempt = models.PositiveIntegerField(_("attempts"), default=0)
    recoveries = models.PositiveIntegerField(_("recoveries"), default=0)
    claim_token = models.CharField(max_length=32, null=True, blank=True)  # noqa: DJ001
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    # When its job was queued; cleared by its claim (the sweep queues a lost one again).
    dispatch_due = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(_("result"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        db_table = "sequence_item"
        verbose_name = _("ForEach element")
        verbose_name_plural = _("ForEach elements")
        ordering = ["sequence", "step_index", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["sequence", "step_index", "index"], name="sequence_item_unique"
            ),
        ]
        indexes = [
            models.Index(
                fields=["sequence", "step_index", "status", "index"], name="sequence_item_idx"
            ),
            # As the records': the sweep's batches, by id, over the rows in question.
            models.Index(
                fields=["id"],
                condition=Q(lease_until__isnull=False),
                name="sequence_item_lease_idx",
            ),
            models.Index(
                fields=["id"],
                condition=Q(dispatch_due__isnull=False),
                name="sequence_item_outbox_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"element {self.index} of step {self.step_index} of sequence {self.sequence_id}"


class SequenceEvent(models.Model):
    """An event sent to a sequence (``seq.send``): kept until a WaitFor consumes it."""

    sequence = models.ForeignKey(SequenceRecord, on_delete=models.CASCADE, related_name="events")
    name = models.CharField(_("event"), max_length=200)
    # The sender's id for it (a webhook's delivery id): a second delivery is ignored.
    event_id = models.CharField(_("event id"), max_length=255, null=True, blank=True)  # noqa: DJ001
    data = models.JSONField(_("data"), default=dict)
    received_at = models.DateTimeField(_("received"), auto_now_add=True)
    consumed_at = models.DateTimeField(_("consumed"), null=True, blank=True)
    # The plan index of the WaitFor that consumed it.
    consumed_by = models.IntegerField(_("consumed at step"), null=True, blank=True)

    class Meta:
        db_table = "sequence_event"
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(
                fields=["sequence", "event_id"],
                condition=Q(event_id__isnull=False),
                name="sequence_event_unique_id",
            ),
        ]
        indexes = [
            models.Index(
                fields=["sequence", "name", "id"],
                condition=Q(consumed_at__isnull=True),
                name="sequence_event_pending_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} for sequence {self.sequence_id}"


class WorkerBeat(models.Model):
    """A worker process that runs steps, and when it last showed it was alive.

    The recovery sweep takes over a step whose worker stopped beating without waiting
    for the step's lease to run out (see docs/guarantees.md).
    """

    name = models.CharField(_("name"), max_length=200, unique=True)
    host = models.CharField(_("host"), max_length=255, blank=True)
    pid = models.PositiveIntegerField(_("process id"), default=0)
    queues = models.CharField(_("queues"), max_length=255, blank=True)
    started_at = models.DateTimeField(_("started"))
    # Database clock, like leases: workers on hosts with skewed clocks agree on it.
    last_seen = models.DateTimeField(_("last seen"))
    stopped_at = models.DateTimeField(_("stopped"), null=True, blank=True)

    class Meta:
        db_table = "sequence_worker"
        verbose_name = _("worker")
        verbose_name_plural = _("workers")
        ordering = ["-last_seen"]
        indexes = [models.Index(fields=["last_seen"], name="sequence_worker_seen_idx")]

    def __str__(self) -> str:
        return self.name


class FlowLock(models.Model):
    """One ``Concurrency`` key of one sequence class: the row whose lock admissions to
    that key take, so that two starts (or a start and a promotion) never count the
    places at once. It holds no state of its own: the places are the records'."""

    name = models.CharField(_("name"), max_length=200)
    key = models.CharField(_("concurrency key"), max_length=255)
    locked_at = models.DateTimeField(_("last admission"))

    class Meta:
        db_table = "sequence_flow_lock"
        verbose_name = _("concurrency key")
        verbose_name_plural = _("concurrency keys")
        constraints = [
            models.UniqueConstraint(fields=["name", "key"], name="sequence_flow_lock_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.key}"
