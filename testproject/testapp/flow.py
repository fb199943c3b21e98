"""Sequences under flow control, for the tests."""

from __future__ import annotations

from typing import Any

from sequence import Concurrency, Sequence, Step
from testproject.testapp.sequences import A, B

# --8<-- [start:sync]


class FetchAccount(Step):
    def perform(self) -> dict[str, Any]:
        return {"fetched": self.data["account_id"]}


class SyncAccount(Sequence):
    """One sync per account at a time; a second start waits, queued, for the first."""

    steps = [FetchAccount]
    concurrency = Concurrency("account_id", limit=1, on_busy="queue")


# --8<-- [end:sync]


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
