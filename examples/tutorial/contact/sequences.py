from django.core.mail import send_mail

from sequence import Retry, Sequence, Step


class CreateMessage(Step):
    """Write the message the team will read from the form's fields."""

    def perform(self):
        name, email, body = self.data["name"], self.data["email"], self.data["body"]
        self.data["message"] = f"{name} <{email}> wrote:\n\n{body}"


class AssignMessage(Step):
    """Choose who answers; a returned dict is merged into the data."""

    def perform(self):
        team = "billing" if "invoice" in self.data["body"].lower() else "support"
        return {"assignee": f"{team}@example.com"}


class NotifyTeam(Step):
    """Mail the message to the team it was assigned to."""

    retry = Retry(max=3, interval=[5, 30, 120])  # a mail server may be down for a while

    def perform(self):
        send_mail(
            subject=f"Contact form: {self.data['name']}",
            message=self.data["message"],
            from_email=None,  # DEFAULT_FROM_EMAIL
            recipient_list=[self.data["assignee"]],
        )


class ContactFormSequence(Sequence):
    steps = [CreateMessage, AssignMessage, NotifyTeam]
