"""An approval from the admin, as a person gives it in headless Chromium: the page of a
waiting sequence, the form, the event sent, and each step's change shown beside it.
Database-only (drain()); the screenshot goes to ``<TEST_OUTPUT>/browser/``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import override_settings

from sequence import Sequence, Step, WaitFor
from sequence.testing import drain

from .conftest import SCREENSHOTS, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOT = SCREENSHOTS / "admin-approval.png"


class Quote(Step):
    def perform(self) -> dict[str, Any]:
        return {"price": 120, "api_token": "tok-very-secret"}


class Refund(Sequence):
    name = "approval_browser.Refund"
    steps = [Quote, WaitFor("approved")]


@override_settings(SEQUENCE_TESTING=True)
def test_a_person_approves_a_waiting_sequence(page: Any, live_server: Any, admin_user: Any) -> None:
    seq = Refund.start({"customer": "Ada"})
    drain()
    seq.refresh()
    assert seq.status == "waiting"

    log_in(page, live_server, f"/admin/sequence/sequencerecord/{seq.id}/change/")
    assert page.get_by_test_id("status").inner_text() == "Waiting"
    changes = page.get_by_test_id("changes").first.inner_text()
    assert "+ price: 120" in changes
    assert '+ api_token: "********"' in changes
    assert "tok-very-secret" not in page.content()

    form = page.get_by_test_id("approval")
    assert form.locator("[name=event]").input_value() == "approved"
    form.locator("[name=data]").fill('{"approved_by": "grace", "price": 90}')
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    fields = form.evaluate("f => Object.fromEntries(new FormData(f))")
    form.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(rf"/{seq.id}/change/$"))
    message = page.locator("ul.messagelist li")
    assert message.inner_text() == f"Sent approved to {Refund.name} #{seq.id}: it is now completed."
    # The same form posted again (a double click, a reload that posts again): sent once.
    again = page.request.post(
        f"{live_server.url}/admin/sequence/sequencerecord/{seq.id}/send/", form=fields
    )
    assert "This form was sent already; nothing changed." in again.text()
    page.reload()

    seq.refresh()
    assert seq.status == "completed"
    assert seq.data["price"] == 90
    assert seq.data["approved_by"] == "grace"
    assert seq.history()[-1]["changes"] == {
        "added": {"approved_by": "grace"}, "changed": {"price": [120, 90]}, "removed": [],
    }  # fmt: skip
    assert page.get_by_test_id("approval").count() == 0  # no longer waiting
    assert "~ price: 120 -> 90" in page.get_by_test_id("changes").last.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "admin-approval-sent.png"), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
