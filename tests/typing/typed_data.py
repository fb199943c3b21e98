"""Checked by mypy in tests/test_typing.py, never imported: Step and Sequence typed by data."""

from __future__ import annotations

from typing import Any, TypedDict, reveal_type

from sequence import Sequence, Step


class OrderData(TypedDict):
    amount: int
    charge_id: str


class Charge(Step[OrderData]):
    def perform(self) -> None:
        self.data["charge_id"] = f"ch_{self.data['amount']}"
        reveal_type(self.data)  # expect: OrderData


class Untyped(Step):
    def perform(self) -> None:
        reveal_type(self.data)  # expect: dict[str, Any]


class Order(Sequence[OrderData]):
    steps = [Charge, Untyped]


def follow(seq: Order, plain: Sequence) -> None:
    reveal_type(seq.data)  # expect: OrderData
    reveal_type(seq.wait())  # expect: OrderData
    reveal_type(plain.data)  # expect: dict[str, Any]
    amount: int = seq.data["amount"]
    anything: Any = plain.data["whatever"]
    del amount, anything


class Misuse(Step[OrderData]):
    def perform(self) -> None:
        self.data["amount"] = "thirty"  # error: not an int
        self.data["colour"] = "red"  # error: not a key of OrderData
