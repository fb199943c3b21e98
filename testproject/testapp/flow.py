"""Sequences under flow control, for the tests."""

from __future__ import annotations

from typing import Any

from sequence import Concurrency, Sequence
from testproject.testapp.sequences import A, B


class OnePerAccount(Sequence):
    steps = [A, B]
    concurrency = Concurrency("account")


def account_of(data: dict[str, Any]) -> Any:
    return data["account"]


class TwoPerAccount(Sequence):
    steps = [A, B]
    concurrency = Concurrency(account_of, limit=2)


class RejectedWhenBusy(Sequence):
    steps = [A, B]
    concurrency = Concurrency("account", on_busy="reject")


class LatestWins(Sequence):
    steps = [A, B]
    concurrency = Concurrency("account", on_busy="cancel_running")
