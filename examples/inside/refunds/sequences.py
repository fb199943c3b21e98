from sequence import Sequence, Step, WaitFor


class Quote(Step):
    def perform(self):
        return {"amount": 120, "status": "quoted"}


class Refund(Step):
    def perform(self):
        self.data["status"] = "refunded"
        self.data["refund_id"] = f"re_{self.data['order_id']}"
        del self.data["amount"]


class RefundSequence(Sequence):
    name = "refunds.Refund"
    steps = [Quote, WaitFor("approved"), Refund]
