from django.test import TestCase, override_settings

from sequence.testing import drain

from .sequences import OrderSequence


@override_settings(SEQUENCE_TESTING=True)
class OrderSequenceTests(TestCase):
    def test_an_order_is_charged_and_receipted(self):
        seq = OrderSequence(sku="tea", quantity=2, amount=30)
        drain()
        seq.refresh()
        self.assertEqual(seq.status, "completed")
        self.assertEqual(seq.progress.done, 3)

    def test_a_paused_order_waits_for_resume(self):
        seq = OrderSequence(sku="tea", quantity=2, amount=30)
        seq.pause()
        self.assertEqual(drain(), 0)  # nothing is due while it is paused
        seq.resume()
        drain()
        seq.refresh()
        self.assertEqual(seq.status, "completed")
