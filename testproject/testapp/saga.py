"""The saga of docs/failure.md: reserve stock, charge, ship; undone when the charge fails."""

from __future__ import annotations

# --8<-- [start:saga]
from sequence import Fail, Retry, Sequence, Step
from testproject.testapp.models import Ledger


class GatewayDown(Exception):
    """The payment provider did not answer: worth trying again."""


class ReserveStock(Step):
    def perform(self):
        Ledger.objects.create(sequence_id=self.sequence.id, step="reserve")
        return {"reservation": f"R-{self.data['order_id']}"}

    def compensate(self):
        # Sees the data as last committed: the reservation made above.
        Ledger.objects.create(
            sequence_id=self.sequence.id, step=f"release {self.data['reservation']}"
        )


class Charge(Step):
    retry = Retry(max=4, interval=2, backoff=2.0, max_interval=60, jitter=0.1, on=(GatewayDown,))

    def perform(self):
        if self.data.get("card") == "declined":
            raise Fail("card declined")  # no retry: the customer must act
        Ledger.objects.create(sequence_id=self.sequence.id, step="charge")
        return {"charged": True}

    def compensate(self):
        Ledger.objects.create(sequence_id=self.sequence.id, step="refund")


class Ship(Step):
    def perform(self):
        Ledger.objects.create(sequence_id=self.sequence.id, step="ship")


class PlaceOrder(Sequence):
    steps = [ReserveStock, Charge, Ship]

    def on_failure(self, error):
        Ledger.objects.create(sequence_id=self.id, step=f"on_failure: {error}")


# --8<-- [end:saga]
