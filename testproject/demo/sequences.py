"""The README's example sequences, run by ``make demo``."""

from __future__ import annotations

import random
import time

from sequence import Retry, Sequence, Step


class CreateMessage(Step):
    retry = Retry(max=3, interval=[1, 5, 30])
    timeout = 300

    def perform(self) -> None:
        self.data["message"] = f"Hello {self.data['name']}"


class AssignMessage(Step):
    def perform(self) -> dict[str, str]:
        # One contact in ten fails its first attempt, to show a retry.
        if self.data.get("flaky") and self.attempt == 1:
            raise ConnectionError("support desk did not answer; RQ will retry")
        return {"assignee": "support"}

    def compensate(self) -> None:
        self.logger.info("unassigning message for %s", self.data["name"])


def notify(data: dict[str, object]) -> None:
    time.sleep(random.uniform(0.001, 0.005))  # stands in for a call to a mail API
    data["notified"] = True


class ContactFormSequence(Sequence):
    steps = [CreateMessage, AssignMessage, notify]
    queue = "default"
