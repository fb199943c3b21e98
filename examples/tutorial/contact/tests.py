from django.core import mail
from django.test import TestCase, override_settings

from contact.sequences import ContactFormSequence
from sequence.testing import drain


# SEQUENCE_TESTING: nothing is queued in Redis, and drain() runs the steps here.
@override_settings(SEQUENCE_TESTING=True)
class ContactFormTests(TestCase):
    def test_a_message_about_an_invoice_is_mailed_to_billing(self):
        seq = ContactFormSequence(name="Ada", email="ada@example.com", body="Where is my invoice?")
        drain()  # runs every step that is due, in this process, until none is
        seq.refresh()
        self.assertEqual(seq.status, "completed")
        self.assertEqual(len(mail.outbox), 1)  # Django's test runner keeps mails here
        self.assertEqual(mail.outbox[0].to, ["billing@example.com"])

    def test_the_form_starts_a_sequence_and_thanks_the_visitor(self):
        response = self.client.post(
            "/", {"name": "Ada", "email": "ada@example.com", "body": "Hello"}, follow=True
        )
        self.assertContains(response, "Message #")
        drain()
        response = self.client.get(response.redirect_chain[-1][0])
        self.assertContains(response, "is completed: 3/3 steps done.")
        self.assertEqual(mail.outbox[0].to, ["support@example.com"])
