"""/sequence/metrics: Prometheus metrics read afresh on each scrape, for staff or a token."""

from __future__ import annotations

import re
import sys
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from sequence.engine.states import Outcome, Status
from sequence.models import StepAttempt
from testproject.testapp.sequences import ThreeSteps

from .conftest import wait_for
from .lifecycle_support import make_record

URL = "/sequence/metrics"


def samples(text: str) -> dict[str, float]:
    """Each sample line of the exposition, ``name{labels}`` -> value."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def _attempt(record, outcome: str, seconds: float, *, ago: timedelta = timedelta()) -> None:
    finished = timezone.now() - ago
    StepAttempt.objects.create(
        sequence=record, step="A", step_index=0, epoch=0, attempt=1, outcome=outcome,
        started_at=finished - timedelta(seconds=seconds), finished_at=finished,
    )  # fmt: skip


@pytest.mark.django_db
def test_the_url_is_the_included_one_and_serves_prometheus_text(admin_client):
    assert reverse("sequence:metrics") == URL
    response = admin_client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert b"# TYPE sequence_sequences gauge" in response.content


@pytest.mark.django_db(transaction=True)
def test_a_scrape_reports_statuses_queues_stuck_and_step_history(admin_client):
    ThreeSteps.start({})
    ThreeSteps.start({})
    done = make_record(status=Status.COMPLETED, step_index=3, finished_at=timezone.now())
    make_record(status=Status.RUNNING, claim_token="t", lease_until=timezone.now())
    _attempt(done, Outcome.SUCCEEDED, 0.2)
    _attempt(done, Outcome.SUCCEEDED, 3)
    _attempt(done, Outcome.FAILED, 40)
    _attempt(done, Outcome.SUCCEEDED, 0.2, ago=timedelta(hours=2))  # counted, not timed
    _attempt(done, Outcome.LOST, 0)

    response = admin_client.get(URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "no-cache" in response["Cache-Control"]
    text = response.content.decode()
    found = samples(text)
    assert found['sequence_sequences{status="pending"}'] == 2
    assert found['sequence_sequences{status="completed"}'] == 1
    assert found['sequence_sequences{status="failed"}'] == 0
    assert found['sequence_queue_length{queue="default"}'] == 2
    assert found['sequence_queue_waiting_sequences{queue="default"}'] == 2
    assert found['sequence_queue_workers{queue="default"}'] == 0
    assert 0 <= found['sequence_queue_oldest_job_age_seconds{queue="default"}'] < 30
    assert found['sequence_stuck{reason="dead_claim"}'] == 1
    assert found['sequence_stuck{reason="lost_job"}'] == 0
    assert found["sequence_healthy"] == 0
    assert found["sequence_failed_last_hour"] == 0
    assert found['sequence_steps_total{outcome="succeeded"}'] == 3
    assert found['sequence_steps_total{outcome="failed"}'] == 1
    assert found['sequence_steps_total{outcome="lost"}'] == 1
    assert found['sequence_steps_total{outcome="compensated"}'] == 0
    assert "# TYPE sequence_steps_total counter" in text
    # The last hour's succeeded and failed attempts: 0.2s, 3s and 40s.
    assert found['sequence_step_duration_seconds_bucket{le="0.1"}'] == 0
    assert found['sequence_step_duration_seconds_bucket{le="0.25"}'] == 1
    assert found['sequence_step_duration_seconds_bucket{le="5.0"}'] == 2
    assert found['sequence_step_duration_seconds_bucket{le="60.0"}'] == 3
    assert found['sequence_step_duration_seconds_bucket{le="+Inf"}'] == 3
    assert found["sequence_step_duration_seconds_gcount"] == 3
    assert found["sequence_step_duration_seconds_gsum"] == pytest.approx(43.2, abs=0.01)


@pytest.mark.django_db(transaction=True)
def test_the_figures_follow_a_real_worker(admin_client, workers):
    seq = ThreeSteps.start({})
    workers.start(queues=("default", "high"))
    seq.wait(30)

    def scraped() -> dict[str, float] | None:
        found = samples(admin_client.get(URL).content.decode())
        return found if found["sequence_healthy"] == 1 else None

    found = wait_for(scraped, message="a healthy scrape")
    assert isinstance(found, dict)
    assert found['sequence_queue_workers{queue="default"}'] == 1
    assert found['sequence_queue_workers{queue="high"}'] == 1
    assert found['sequence_sequences{status="completed"}'] == 1
    assert found['sequence_steps_total{outcome="succeeded"}'] == 3
    assert found["sequence_step_duration_seconds_gcount"] == 3


@pytest.mark.django_db
def test_anonymous_scrapers_need_the_token(client, settings):
    response = client.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert "SEQUENCE_METRICS_TOKEN" in response.content.decode()
    settings.SEQUENCE_METRICS_TOKEN = "s3cret"
    assert client.get(URL, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get(URL, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200
    assert re.search(
        r"^sequence_sequences\{status=\"pending\"\} 0.0$", response.content.decode(), re.M
    )


@pytest.mark.django_db
def test_logged_in_non_staff_users_are_refused(client, django_user_model):
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)
    assert client.get(URL).status_code == 401


@pytest.mark.django_db
def test_without_prometheus_client_the_url_names_the_extra(admin_client, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.setitem(sys.modules, "prometheus_client.exposition", None)
    response = admin_client.get(URL)
    assert response.status_code == 501
    assert response.content.decode() == (
        "Prometheus metrics need prometheus_client: pip install 'django-rq-sequence[prometheus]'\n"
    )
