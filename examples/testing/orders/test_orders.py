import pytest

from sequence.models import StepAttempt
from sequence.testing import drain

from . import shop
from .sequences import OrderSequence


@pytest.fixture(autouse=True)
def sequence_testing(settings):
    settings.SEQUENCE_TESTING = True  # or in your test settings module


def test_an_order_is_charged_and_receipted(db):
    seq = OrderSequence(sku="tea", quantity=2, amount=30)
    assert drain() == 3  # one attempt per step
    seq.refresh()
    assert seq.status == "completed"
    assert seq.data["charge_id"].startswith("ch_")
    assert seq.data["receipt_sent"] is True


def test_the_charge_is_retried_while_the_gateway_is_down(db, monkeypatch):
    calls = []

    def flaky_charge(amount, idempotency_key):
        calls.append(idempotency_key)
        if len(calls) < 3:
            raise shop.GatewayDown("timed out")
        return {"charge_id": "ch_1"}

    monkeypatch.setattr(shop, "charge", flaky_charge)
    seq = OrderSequence(sku="tea", quantity=2, amount=30)
    drain()  # the retries run at once: no waiting 10 s, then 60 s
    seq.refresh()
    assert seq.status == "completed"
    assert len(set(calls)) == 1  # one idempotency key across the retries
    outcomes = StepAttempt.objects.filter(sequence_id=seq.id, step="ChargeCard")
    assert list(outcomes.values_list("outcome", flat=True)) == ["failed", "failed", "succeeded"]


def test_a_declined_card_fails_the_order_and_puts_the_stock_back(db, monkeypatch):
    def declined(amount, idempotency_key):
        raise shop.CardDeclined("insufficient funds")

    released = []
    monkeypatch.setattr(shop, "charge", declined)
    monkeypatch.setattr(shop, "release", released.append)
    seq = OrderSequence(sku="tea", quantity=2, amount=30)
    assert drain() == 3  # reserve, one charge (Fail is never retried), the compensation
    seq.refresh()
    assert seq.status == "failed"
    assert seq.error == "card declined: insufficient funds"
    assert released == ["res_tea_2"]


def test_fail_fast_shows_the_steps_own_exception(db, monkeypatch):
    def down(amount, idempotency_key):
        raise shop.GatewayDown("timed out")

    monkeypatch.setattr(shop, "charge", down)
    OrderSequence(sku="tea", quantity=2, amount=30)
    with pytest.raises(shop.GatewayDown):
        drain(fail_fast=True)
