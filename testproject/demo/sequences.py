"""The README's example sequences, run by ``make demo``."""

from __future__ import annotations

import random
import time

from sequence import Fail, Retry, Sequence, Sleep, Step, WaitFor


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


# -- the tour after the bar: failure, pause, sleep, events, a killed worker -------------


class ReserveStock(Step):
    def perform(self) -> dict[str, bool]:
        return {"reserved": True}

    def compensate(self) -> None:
        self.logger.info("releasing the stock reserved for order %s", self.data["order"])


class ChargeCard(Step):
    def perform(self) -> None:
        raise Fail("card declined")


class Checkout(Sequence):
    """Fails for good at its second step; the first step's compensation runs."""

    steps = [ReserveStock, ChargeCard]


class Pack(Step):
    def perform(self) -> None:
        time.sleep(1.5)  # long enough for the demo to pause the sequence meanwhile


def label(data: dict[str, object]) -> None:
    data["label"] = f"PARCEL-{data['order']}"


def ship(data: dict[str, object]) -> None:
    data["shipped"] = True


class Shipment(Sequence):
    steps = [Pack, label, ship]


def send_welcome(data: dict[str, object]) -> None:
    data["welcomed"] = True


def send_tips(data: dict[str, object]) -> None:
    data["tips"] = True


class Onboarding(Sequence):
    steps = [send_welcome, Sleep(seconds=3), send_tips]


def submit(data: dict[str, object]) -> None:
    data["submitted"] = True


def pay(data: dict[str, object]) -> None:
    data["paid"] = data.get("approved_by") is not None


class Expense(Sequence):
    steps = [submit, WaitFor("approved"), pay]


class Fetch(Step):
    timeout = 60

    def perform(self) -> dict[str, int]:
        time.sleep(2)  # the demo kills the worker running this, mid-step
        return {"rows": 42}


def load(data: dict[str, object]) -> None:
    data["loaded"] = data["rows"]


class Import(Sequence):
    steps = [Fetch, load]
