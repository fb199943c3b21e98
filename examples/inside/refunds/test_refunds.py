import pytest

from sequence.testing import drain

from .sequences import RefundSequence


@pytest.fixture(autouse=True)
def sequence_testing(settings):
    settings.SEQUENCE_TESTING = True


def test_the_history_says_what_each_step_changed(db):
    seq = RefundSequence(order_id=42)
    drain()
    seq.send("approved", {"approved_by": "grace", "amount": 100})
    drain()

    changes = [(h["step"], h["outcome"], h["changes"]) for h in seq.history()]
    assert changes[0] == (
        "Quote",
        "succeeded",
        {"added": {"amount": 120, "status": "quoted"}, "changed": {}, "removed": []},
    )
    # The WaitFor's second row: the event it took, merged into the data.
    assert changes[2][2] == {
        "added": {"approved_by": "grace"},
        "changed": {"amount": [120, 100]},
        "removed": [],
    }
    assert changes[3] == (
        "Refund",
        "succeeded",
        {
            "added": {"refund_id": "re_42"},
            "changed": {"status": ["quoted", "refunded"]},
            "removed": ["amount"],
        },
    )
