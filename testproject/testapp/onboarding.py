"""The onboarding of docs/waiting.md: mails spaced by a sleep, then a wait for activation."""

from __future__ import annotations

# --8<-- [start:onboarding]
from datetime import timedelta

from sequence import Sequence, Sleep, Step, WaitFor
from testproject.testapp.models import Ledger


class SendWelcome(Step):
    def perform(self):
        Ledger.objects.create(sequence_id=self.sequence.id, step="welcome")


class SendTips(Step):
    def perform(self):
        Ledger.objects.create(sequence_id=self.sequence.id, step="tips")


class SendThanks(Step):
    def perform(self):
        # The activation event's data was merged into the data.
        Ledger.objects.create(sequence_id=self.sequence.id, step=f"thanks ({self.data['plan']})")


class Onboarding(Sequence):
    steps = [
        SendWelcome,
        Sleep(days=3),
        SendTips,
        WaitFor("activated", timeout=timedelta(days=7)),
        SendThanks,
    ]


# --8<-- [end:onboarding]
