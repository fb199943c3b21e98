from sequence import Fail, Retry, Sequence, Step

from . import shop


class ReserveStock(Step):
    def perform(self):
        return {"reservation": shop.reserve(self.data["sku"], self.data["quantity"])}

    def compensate(self):  # runs if a later step fails for good
        shop.release(self.data["reservation"])


class ChargeCard(Step):
    # Retried only while the gateway is down; any other error fails the order at once.
    retry = Retry(max=3, interval=[10, 60, 600], on=(shop.GatewayDown,))

    def perform(self):
        try:
            receipt = shop.charge(self.data["amount"], self.idempotency_key)
        except shop.CardDeclined as exc:
            raise Fail(f"card declined: {exc}") from exc
        return {"charge_id": receipt["charge_id"]}


def send_receipt(data):
    data["receipt_sent"] = True


class OrderSequence(Sequence):
    steps = [ReserveStock, ChargeCard, send_receipt]
