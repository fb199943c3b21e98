"""The bulk mail of docs/fanout.md: one durable step per recipient."""

from __future__ import annotations

# --8<-- [start:campaign]
from sequence import ForEach, Retry, Sequence, Step
from testproject.testapp.models import Ledger


class LoadRecipients(Step):
    def perform(self):
        return {"user_ids": list(range(1, self.data["audience"] + 1))}


class SendEmail(Step):
    retry = Retry(max=3, interval=5, backoff=2.0)

    def perform(self):
        # self.item: this recipient; self.idempotency_key is its own, for the mail API.
        Ledger.objects.create(
            sequence_id=self.sequence.id,
            step=f"mail {self.item}",
            idempotency_key=self.idempotency_key,
        )
        return {"ok": True}


class Report(Step):
    def perform(self):
        sent = sum(1 for result in self.data["results"] if result["ok"])
        return {"sent": sent}


class Campaign(Sequence):
    steps = [
        LoadRecipients,
        ForEach("user_ids", SendEmail, concurrency=20, into="results"),
        Report,
    ]


# --8<-- [end:campaign]
