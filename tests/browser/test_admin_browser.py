"""The admin as a person sees it, in headless Chromium: log in, read the list, open a
running sequence, pause it and resume it. Screenshots of both pages go to
``<TEST_OUTPUT>/browser/``."""

from __future__ import annotations

import re

import pytest

from sequence.engine.states import Status
from sequence.models import SequenceRecord, StepAttempt
from testproject.testapp.sequences import Compensating, FlakySequence, Slow, ThreeSteps
from tests.conftest import wait_for

from .conftest import SCREENSHOTS, log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LIST_SCREENSHOT = SCREENSHOTS / "admin-list.png"
DETAIL_SCREENSHOT = SCREENSHOTS / "admin-detail.png"
FAILED_SCREENSHOT = SCREENSHOTS / "admin-failed.png"


def status_of(pk: int) -> str:
    return SequenceRecord.objects.values_list("status", flat=True).get(pk=pk)


def test_a_person_pauses_and_resumes_a_running_sequence(page, live_server, admin_user, workers):
    workers.start()
    done = FlakySequence.start({"fail_times": 1})  # one failed attempt, then success
    broken = Compensating.start({"customer": "<b>Ada</b>"})  # fails, compensates
    quick = ThreeSteps.start({})
    wait_for(lambda: status_of(done.id) == Status.COMPLETED, 60, "the flaky sequence")
    wait_for(lambda: status_of(broken.id) == Status.FAILED, 60, "the broken sequence")
    wait_for(lambda: status_of(quick.id) == Status.COMPLETED, 60, "the quick sequence")
    # Each of its steps sleeps this long: time to pause while the first one runs.
    slow = Slow.start({"sleep": 6, "customer": "Grace", "api_token": "tok-very-secret"})
    wait_for(lambda: status_of(slow.id) == Status.RUNNING, 30, "the slow step to start")

    # Log in.
    log_in(page, live_server, "/admin/sequence/sequencerecord/")

    # The list: a coloured badge and a progress bar per sequence.
    row = page.locator("#result_list tbody tr", has=page.locator(f"a[href$='/{slow.id}/change/']"))
    badge = row.locator(".seq-badge")
    assert badge.inner_text() == "Running"
    assert badge.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(37, 99, 235)"
    assert row.locator(".seq-progress-text").inner_text() == "0/2"
    failed_row = page.locator(
        "#result_list tbody tr", has=page.locator(f"a[href$='/{broken.id}/change/']")
    )
    assert failed_row.locator(".seq-badge").inner_text() == "Failed"
    assert (
        failed_row.locator(".seq-badge").evaluate("e => getComputedStyle(e).backgroundColor")
        == "rgb(185, 28, 28)"
    )
    done_row = page.locator(
        "#result_list tbody tr", has=page.locator(f"a[href$='/{done.id}/change/']")
    )
    fill = done_row.locator(".seq-progress-fill")
    track = done_row.locator(".seq-progress")
    assert fill.bounding_box()["width"] == pytest.approx(track.bounding_box()["width"], abs=1)
    assert page.locator("p.paginator").inner_text().strip().endswith("4 sequences")
    page.screenshot(path=str(LIST_SCREENSHOT), full_page=True)

    # The running sequence's page: the step in flight on the timeline, secrets hidden.
    row.locator(f"a[href$='/{slow.id}/change/']").first.click()
    page.wait_for_url(re.compile(rf"/{slow.id}/change/$"))
    assert page.get_by_test_id("status").inner_text() == "Running"
    assert page.locator(".seq-bar.seq-outcome-in-flight").count() == 1
    assert "tok-very-secret" not in page.content()
    assert '"api_token": "********"' in page.get_by_test_id("data").inner_text()

    # Pause: the message, the badge, and the resume button in place of pause.
    page.get_by_role("button", name="Pause").click()
    message = page.locator("ul.messagelist li.success")
    assert message.inner_text() == f"Paused testapp.Slow #{slow.id}: it is now paused."
    assert page.get_by_test_id("status").inner_text() == "Paused"
    assert page.get_by_role("button", name="Pause").count() == 0

    # The step in flight finishes and its result is kept; no further step starts.
    wait_for(
        lambda: StepAttempt.objects.filter(sequence_id=slow.id, outcome="succeeded").exists(),
        30,
        "the paused sequence's step in flight to finish",
    )
    page.reload()
    assert page.get_by_test_id("status").inner_text() == "Paused"
    assert page.locator(".seq-bar.seq-outcome-succeeded").count() == 1
    assert page.locator(".seq-plan-current .seq-plan-name").inner_text() == "B"
    assert page.locator(".seq-progress-large .seq-progress-text").inner_text() == (
        "1 of 2 steps done"
    )

    # Resume: the next step is queued and runs.
    page.get_by_role("button", name="Resume").click()
    assert message.inner_text() == f"Resumed testapp.Slow #{slow.id}: it is now pending."
    # A worker may take the step before the page is drawn again.
    assert page.get_by_test_id("status").inner_text() in ("Pending", "Running")
    assert page.locator(".seq-bar.seq-outcome-succeeded").count() == 1
    page.screenshot(path=str(DETAIL_SCREENSHOT), full_page=True)
    wait_for(lambda: status_of(slow.id) == Status.RUNNING, 30, "the next step to start")
    page.reload()
    assert page.get_by_test_id("status").inner_text() == "Running"
    bars = page.locator(".seq-timeline .seq-bar")
    assert [bars.nth(i).get_attribute("data-outcome") for i in range(bars.count())] == [
        "succeeded",
        "in-flight",
    ]

    wait_for(lambda: status_of(slow.id) == Status.COMPLETED, 30, "the resumed sequence")
    page.reload()
    assert page.get_by_test_id("status").inner_text() == "Completed"
    assert page.locator(".seq-plan-done").count() == 2
    assert LIST_SCREENSHOT.stat().st_size > 10_000
    assert DETAIL_SCREENSHOT.stat().st_size > 10_000


def test_a_failed_sequence_shows_its_error_and_traceback(page, live_server, admin_user, workers):
    workers.start()
    broken = Compensating.start({"password": "hunter2-secret"})
    wait_for(lambda: status_of(broken.id) == Status.FAILED, 60, "the broken sequence")
    log_in(page, live_server, f"/admin/sequence/sequencerecord/{broken.id}/change/")
    assert page.get_by_test_id("status").inner_text() == "Failed"
    assert (
        page.locator(".seq-error").inner_text() == "Error: Broken failed: ValueError: broken step"
    )
    outcomes = page.locator(".seq-timeline .seq-bar")
    assert [outcomes.nth(i).get_attribute("data-outcome") for i in range(outcomes.count())] == [
        "succeeded",
        "failed",
        "failed",
        "compensated",
    ]
    failed_bar = outcomes.nth(1)
    assert failed_bar.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(185, 28, 28)"
    # A person opens the traceback of the last failed attempt.
    details = page.locator(".seq-attempts details").last
    details.locator("summary").click()
    assert "ValueError: broken step" in details.locator("pre").inner_text()
    assert "hunter2-secret" not in page.content()
    page.screenshot(path=str(FAILED_SCREENSHOT), full_page=True)
    # Retry with edited data is offered, as a link to its form.
    page.get_by_role("link", name="Retry with edited data…").click()
    assert '"password": "********"' in page.locator("textarea").input_value()
