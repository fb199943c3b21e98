"""Prometheus metrics: the figures of ``sequence health`` and the step history, per scrape.

Needs ``prometheus_client`` (``pip install django-rq-sequence[prometheus]``). Served by
``metrics_view`` at ``sequence/metrics`` once a project includes ``sequence.ops.urls``, to
staff users or to a scraper sending ``Authorization: Bearer <SEQUENCE_METRICS_TOKEN>``,
as django-rq serves its own.

Everything is read from the database and Redis when Prometheus scrapes; nothing is kept
between scrapes. The step counters are the database's counts of ``StepAttempt`` rows by
outcome, so they only go up, except when ``sequence prune`` deletes history: Prometheus
reads that drop as a counter reset. The duration histogram covers the attempts that
finished within the last hour, recomputed each scrape: it is a gauge histogram, to be
read as "the last hour's distribution", not summed over time with ``rate()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from secrets import compare_digest
from typing import TYPE_CHECKING, Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache

from sequence.declare.conf import settings
from sequence.engine.states import Outcome
from sequence.models import StepAttempt, ago
from sequence.ops.health import gather

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Upper bounds, in seconds, of the step duration buckets.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# The window the duration histogram covers.
WINDOW = timedelta(hours=1)
# Outcomes whose attempt ran the step's body: their duration is the step's.
TIMED = (Outcome.SUCCEEDED, Outcome.FAILED)

MISSING = (
    "Prometheus metrics need prometheus_client: pip install 'django-rq-sequence[prometheus]'\n"
)


class SequenceCollector:
    """A prometheus_client collector; each ``collect()`` reads the figures afresh."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeHistogramMetricFamily,
            GaugeMetricFamily,
        )

        health = gather()
        by_status = GaugeMetricFamily(
            "sequence_sequences", "Sequences by status.", labels=["status"]
        )
        for status, count in health.by_status.items():
            by_status.add_metric([status], count)
        yield by_status

        length = GaugeMetricFamily(
            "sequence_queue_length", "Jobs waiting in the RQ queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "sequence_queue_oldest_job_age_seconds",
            "Seconds the oldest job waiting in the RQ queue has waited (0 when none waits).",
            labels=["queue"],
        )
        workers = GaugeMetricFamily(
            "sequence_queue_workers", "Live workers on the queue.", labels=["queue"]
        )
        waiting = GaugeMetricFamily(
            "sequence_queue_waiting_sequences",
            "Pending or retrying sequences whose current step runs on the queue.",
            labels=["queue"],
        )
        for queue in health.queues:
            if queue.length is not None:
                length.add_metric([queue.name], queue.length)
                oldest.add_metric([queue.name], queue.oldest_age or 0.0)
            workers.add_metric([queue.name], len(queue.workers))
            waiting.add_metric([queue.name], queue.waiting)
        yield from (length, oldest, workers, waiting)

        stuck = GaugeMetricFamily(
            "sequence_stuck",
            "Sequences past the recovery sweep's thresholds, by reason.",
            labels=["reason"],
        )
        stuck.add_metric(["dead_claim"], health.stuck.dead_claims)
        stuck.add_metric(["overdue_dispatch"], health.stuck.overdue_outbox)
        stuck.add_metric(["lost_job"], health.stuck.lost_jobs)
        yield stuck
        yield GaugeMetricFamily(
            "sequence_failed_last_hour",
            "Sequences that failed within the last hour.",
            value=health.failed_last_hour,
        )
        yield GaugeMetricFamily(
            "sequence_healthy",
            "1 when `manage.py sequence health` would exit 0.",
            value=int(health.healthy),
        )

        rows = _attempts()
        steps = CounterMetricFamily(
            "sequence_steps",
            "Step attempts recorded, by outcome (the database's count of them).",
            labels=["outcome"],
        )
        for outcome in Outcome:
            steps.add_metric(
                [outcome.value], sum(r["total"] for r in rows if r["outcome"] == outcome)
            )
        yield steps

        timed = [r for r in rows if r["outcome"] in TIMED]
        cumulative = [
            (_bound(bound), sum(r[f"le_{i}"] for r in timed)) for i, bound in enumerate(BUCKETS)
        ]
        cumulative.append(("+Inf", sum(r["recent"] for r in timed)))
        seconds = 0.0
        for row in timed:
            seconds += _seconds(row["seconds"])
        yield GaugeHistogramMetricFamily(
            "sequence_step_duration_seconds",
            "Durations of the step attempts that finished within the last hour.",
            buckets=cumulative,
            gsum_value=seconds,
        )

    def describe(self) -> list[Metric]:
        # Describing would run collect(): the registry then knows the names without it.
        return []


def _attempts() -> list[dict[str, Any]]:
    """One statement: attempts by outcome, all time and in the window, bucketed by duration."""
    recent = Q(finished_at__gte=ago(WINDOW.total_seconds()))
    buckets = {
        f"le_{i}": Count(
            "pk", filter=recent & Q(finished_at__lte=F("started_at") + timedelta(seconds=bound))
        )
        for i, bound in enumerate(BUCKETS)
    }
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    rows = (
        StepAttempt.objects.order_by()
        .values("outcome")
        .annotate(
            total=Count("pk"),
            recent=Count("pk", filter=recent),
            seconds=Sum(took, filter=recent),
            **buckets,
        )
    )
    return [dict(row) for row in rows]


def _bound(bound: float) -> str:
    return repr(float(bound))


def _seconds(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value) / 1_000_000  # microseconds, as some backends sum durations


def _authorized(request: HttpRequest) -> bool:
    """Staff, or the bearer of SEQUENCE_METRICS_TOKEN (django-rq's rule for its metrics)."""
    if getattr(request.user, "is_staff", False):
        return True
    token = str(settings.METRICS_TOKEN or "")
    header = request.headers.get("Authorization", "")
    sent = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return bool(token and sent and compare_digest(token, sent))


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics in Prometheus's text format (or OpenMetrics, as the scraper asks)."""
    if not _authorized(request):
        response = HttpResponse(
            "Log in as a staff user, or send Authorization: Bearer <SEQUENCE_METRICS_TOKEN>.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import choose_encoder
    except ImportError:
        return HttpResponse(MISSING, status=501, content_type="text/plain; charset=utf-8")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SequenceCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
