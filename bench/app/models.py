from __future__ import annotations

from django.db import models


class HandChain(models.Model):
    """The row a hand-written chain keeps: its data and the index of its next step."""

    data = models.JSONField(default=dict)
    step_index = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default="pending")
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"chain {self.pk} at {self.step_index}/{self.steps}"
