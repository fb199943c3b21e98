"""Stands in for the services a real shop calls: its stock and a payment provider."""


class GatewayDown(Exception):
    """The payment provider did not answer; worth trying again."""


class CardDeclined(Exception):
    """The provider refused the card; trying again will not help."""


def reserve(sku, quantity):
    return f"res_{sku}_{quantity}"


def release(reservation):
    pass


def charge(amount, idempotency_key):
    return {"charge_id": f"ch_{idempotency_key}", "amount": amount}
