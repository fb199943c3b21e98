"""``SequenceInline`` as a person sees it, in headless Chromium: an order's own admin page
lists the sequences started about it, each linking to its page, which links back; once
the order is deleted its sequences stay and say so. The screenshot goes to
``<TEST_OUTPUT>/browser/``."""

from __future__ import annotations

import re

import pytest

from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.models import Order
from testproject.testapp.sequences import Compensating, Slow, ThreeSteps
from tests.conftest import wait_for

from .conftest import SCREENSHOTS, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

INLINE_SCREENSHOT = SCREENSHOTS / "subject-inline.png"

# The badge colours of the sequence list, which the inline shares.
COMPLETED, FAILED, PAUSED = "rgb(21, 128, 61)", "rgb(185, 28, 28)", "rgb(124, 58, 237)"


def status_of(pk: int) -> str:
    return SequenceRecord.objects.values_list("status", flat=True).get(pk=pk)


def background(locator) -> str:
    return locator.evaluate("e => getComputedStyle(e).backgroundColor")


def test_an_orders_page_lists_its_sequences_newest_first_linking_both_ways(
    page, live_server, admin_user, workers
):
    workers.start()
    order = Order.objects.create(number="1001")
    done = ThreeSteps.start({}, subject=order)
    broken = Compensating.start({}, subject=order)  # fails, compensates
    ThreeSteps.start({}, subject=Order.objects.create(number="1002"))  # another order's
    wait_for(lambda: status_of(done.id) == Status.COMPLETED, 60, "the completed sequence")
    wait_for(lambda: status_of(broken.id) == Status.FAILED, 60, "the failed sequence")
    # Paused after its first step: it stays put while the page is read.
    paused = Slow.start({"sleep": 2}, subject=order)
    wait_for(lambda: status_of(paused.id) == Status.RUNNING, 30, "the slow step to start")
    paused.pause()
    wait_for(
        lambda: StepAttempt.objects.filter(sequence_id=paused.id, outcome="succeeded").exists(),
        30,
        "the paused sequence's step in flight to finish",
    )

    # Log in, straight to the order's own page.
    order_path = f"/admin/testapp/order/{order.pk}/change/"
    log_in(page, live_server, order_path)

    # The inline: this order's three sequences, newest first, read-only.
    inline = page.locator(".inline-group")
    assert inline.locator("h2").text_content().strip() == "Sequences"  # CSS capitalises it
    rows = inline.locator("tbody tr.has_original")
    assert rows.count() == 3
    links = rows.locator(".field-sequence a")
    assert links.all_inner_texts() == [
        f"testapp.Slow #{paused.id}",
        f"testapp.Compensating #{broken.id}",
        f"testapp.ThreeSteps #{done.id}",
    ]
    assert [link.get_attribute("href") for link in links.all()] == [
        f"/admin/sequence/sequencerecord/{seq.id}/change/" for seq in (paused, broken, done)
    ]
    assert inline.locator("input:not([type=hidden]), select, textarea").count() == 0
    # The admin's title line over each row would repeat the link: it is not shown.
    assert rows.locator("td.original p:visible").count() == 0
    assert "Add another" not in inline.inner_text()

    # Status badge (the list's colours), progress and current step of each.
    seen = [
        (
            row.locator(".seq-badge").inner_text(),
            background(row.locator(".seq-badge")),
            row.locator(".seq-progress-text").inner_text(),
            row.locator(".field-step").inner_text(),
        )
        for row in rows.all()
    ]
    assert seen == [
        ("Paused", PAUSED, "1/2", "B"),
        ("Failed", FAILED, "1/3", "Broken"),
        ("Completed", COMPLETED, "3/3", "—"),
    ]
    # The bars are drawn to scale: half of the paused one, all of the completed one.
    for row, share in ((rows.nth(0), 1 / 2), (rows.nth(2), 1)):
        fill = row.locator(".seq-progress-fill").bounding_box()["width"]
        track = row.locator(".seq-progress").bounding_box()["width"]
        assert fill == pytest.approx(track * share, abs=1)
    page.screenshot(path=str(INLINE_SCREENSHOT), full_page=True)
    assert INLINE_SCREENSHOT.stat().st_size > 10_000

    # Following a link reaches the sequence's page, which links back to the order.
    links.first.click()
    page.wait_for_url(re.compile(rf"/sequencerecord/{paused.id}/change/$"))
    assert page.get_by_test_id("status").inner_text() == "Paused"
    page.get_by_test_id("subject").get_by_role("link", name="Order #1001").click()
    page.wait_for_url(re.compile(rf"{order_path}$"))

    # Deleting the order leaves its sequences; their pages say the order is gone.
    page.goto(f"{live_server.url}/admin/testapp/order/{order.pk}/delete/")
    page.locator("input[type=submit]").click()
    page.wait_for_url(re.compile(r"/admin/testapp/order/$"))
    assert not Order.objects.filter(pk=order.pk).exists()
    assert SequenceRecord.objects.filter(subject_id=order.pk).count() == 3
    page.goto(f"{live_server.url}/admin/sequence/sequencerecord/{done.id}/change/")
    subject = page.get_by_test_id("subject")
    assert subject.inner_text() == f"Order {order.pk} (deleted)"
    assert subject.locator("a").count() == 0
