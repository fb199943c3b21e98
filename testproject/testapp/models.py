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
