from __future__ import annotations

from django.db import models


class Ledger(models.Model):
    """One row per execution of a step body: tests count them."""

    sequence_id = models.BigIntegerField()
    step = models.CharField(max_length=100)
    idempotency_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.sequence_id}:{self.step}"


class Journal(models.Model):
    """Every insert and update of a sequence row, written by a database trigger.

    The fault tests' oracle: installed only by those tests (tests/faults/journal.py), in
    the same transaction as the change it records, so it holds exactly the changes that
    committed, in the order they committed for each sequence.
    """

    seq_id = models.BigIntegerField(db_index=True)
    op = models.CharField(max_length=1)
    old_status = models.CharField(max_length=16, null=True)  # noqa: DJ001 - NULL on insert
    new_status = models.CharField(max_length=16)
    old_epoch = models.BigIntegerField(null=True)
    new_epoch = models.BigIntegerField()
    old_step = models.IntegerField(null=True)
    new_step = models.IntegerField()
    old_token = models.CharField(max_length=32, null=True)  # noqa: DJ001
    new_token = models.CharField(max_length=32, null=True)  # noqa: DJ001
    old_due = models.BooleanField(null=True)
    new_due = models.BooleanField()
    claimed_by = models.CharField(max_length=200, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.seq_id}: {self.old_status}->{self.new_status} e{self.new_epoch}"


class BodyRun(models.Model):
    """A step body started (outside any transaction): at-least-once runs are visible."""

    seq_id = models.BigIntegerField(db_index=True)
    step = models.CharField(max_length=100)
    step_index = models.IntegerField()
    epoch = models.BigIntegerField()
    attempt = models.IntegerField()
    pid = models.IntegerField()
    note = models.CharField(max_length=100, blank=True)

    def __str__(self) -> str:
        return f"{self.seq_id}:{self.step}@{self.epoch}"


class Effect(models.Model):
    """Written by an ``atomic = True`` step inside its commit: must appear exactly once."""

    seq_id = models.BigIntegerField(db_index=True)
    step = models.CharField(max_length=100)

    def __str__(self) -> str:
        return f"{self.seq_id}:{self.step}"


class Payment(models.Model):
    """An idempotency ledger keyed by ``self.idempotency_key``, as a payment API keeps one."""

    key = models.CharField(max_length=200, unique=True)
    seq_id = models.BigIntegerField(db_index=True)
    step = models.CharField(max_length=100)

    def __str__(self) -> str:
        return self.key


class Order(models.Model):
    """A model of the user's own that sequences are started about (``subject=``)."""

    number = models.CharField(max_length=20)

    def __str__(self) -> str:
        return f"Order #{self.number}"
