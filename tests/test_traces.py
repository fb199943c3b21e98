"""Traces and logs: each attempt a span in the trace its sequence started in, each line a
worker writes naming its sequence (docs/traces.md)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sequence import Fail, ForEach, Retry, Sequence, Step
from sequence.testing import drain
from testproject.testapp.sequences import FlakySequence

from .conftest import ROOT, Workers, wait_for


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # a process sets its provider once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(exporter: InMemorySpanExporter, settings: object) -> Iterator[InMemorySpanExporter]:
    settings.SEQUENCE_TESTING = True  # type: ignore[attr-defined]
    exporter.clear()
    yield exporter
    exporter.clear()


class Reserve(Step):
    def perform(self) -> None:
        self.data["reserved"] = True

    def compensate(self) -> None:
        pass


class FlakyOnce(Step):
    retry = Retry(max=1)

    def perform(self) -> None:
        if self.attempt == 1:
            raise TimeoutError(f"gateway slow for {self.data['secret_token']}")


class Send(Step):
    def perform(self) -> None:
        pass


class Decline(Step):
    def perform(self) -> None:
        raise Fail("card declined")


class TracedOrder(Sequence):
    steps = [Reserve, FlakyOnce, ForEach("lines", Send), Decline]


def attributes(span: ReadableSpan) -> tuple[object, ...]:
    a = span.attributes or {}
    return (a["sequence.step"], a["sequence.kind"], a["sequence.attempt"], a["sequence.outcome"])


@pytest.mark.django_db
def test_every_attempt_is_a_span_in_the_trace_start_ran_in(spans):
    tracer = trace.get_tracer("shop")
    with tracer.start_as_current_span("checkout") as checkout:
        seq = TracedOrder.start({"lines": [1, 2], "secret_token": "tok-123"})
    drain()
    steps = [s for s in spans.get_finished_spans() if s.name == "sequence.step"]
    fan_out = seq.record.plan[2]  # named as in the history
    assert [attributes(s) for s in steps] == [
        ("Reserve", "step", 1, "succeeded"),
        ("FlakyOnce", "step", 1, "failed"),
        ("FlakyOnce", "step", 2, "succeeded"),
        (fan_out, "step", 1, "succeeded"),
        (fan_out, "item", 1, "succeeded"),
        (fan_out, "item", 1, "succeeded"),
        ("Decline", "step", 1, "failed"),
        ("Reserve", "undo", 1, "compensated"),
    ]
    context = checkout.get_span_context()
    for span in steps:
        assert span.context.trace_id == context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == context.span_id
        assert span.attributes["sequence.id"] == seq.id
        assert span.attributes["sequence.name"] == TracedOrder.name
    assert [s.attributes.get("sequence.element") for s in steps[4:6]] == [0, 1]
    failed = [s.status for s in steps if s.attributes["sequence.outcome"] == "failed"]
    assert [(s.status_code, s.description) for s in failed] == [
        (StatusCode.ERROR, "TimeoutError: gateway slow for ********"),  # masked, as in the history
        (StatusCode.ERROR, "card declined"),
    ]
    assert all(s.status.status_code == StatusCode.UNSET for s in steps if s.status not in failed)


@pytest.mark.django_db
def test_a_sequence_started_outside_any_trace_is_a_trace_of_its_own(spans):
    FlakySequence.start({"fail_times": 1})
    drain()
    finished = spans.get_finished_spans()
    root = finished[0]
    assert root.name == "sequence.start"
    assert root.parent is None
    assert len(finished) == 5  # the start, A, Flaky twice, C
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}


@pytest.mark.django_db
def test_start_many_records_the_callers_trace_on_every_sequence(spans):
    with trace.get_tracer("shop").start_as_current_span("import") as parent:
        FlakySequence.start_many([{}, {}])
    drain()
    steps = [s for s in spans.get_finished_spans() if s.name == "sequence.step"]
    assert len(steps) == 6
    assert {s.context.trace_id for s in steps} == {parent.get_span_context().trace_id}
    assert len({s.attributes["sequence.id"] for s in steps}) == 2


@pytest.mark.django_db
def test_a_workers_log_lines_name_the_sequence_as_fields(spans, caplog):
    caplog.set_level(logging.INFO, logger="sequence")
    seq = TracedOrder.start({"lines": [1], "secret_token": "tok-123"})
    drain()
    retried = next(r for r in caplog.records if "RQ retries it" in r.getMessage())
    assert f"{TracedOrder.name} #{seq.id}" in retried.getMessage()  # still readable
    assert (
        retried.sequence_id,
        retried.sequence_name,
        retried.sequence_step,
        retried.sequence_attempt,
    ) == (seq.id, TracedOrder.name, "FlakyOnce", 1)
    element = next(r for r in caplog.records if "element 0 of ForEach" in r.getMessage())
    assert (element.sequence_step, element.sequence_element) == (seq.record.plan[2], 0)
    assert all(r.sequence_id == seq.id for r in caplog.records if r.name == "sequence")


# Run in a process where OpenTelemetry cannot be imported, as without the [otel] extra.
WITHOUT_OTEL = """
import sys
sys.modules["opentelemetry"] = None
import django
django.setup()
from sequence.testing import drain
from testproject.testapp.sequences import FlakySequence
seq = FlakySequence.start({"fail_times": 1})
drain()
seq.refresh()
print(json.dumps([seq.status, seq.record.traceparent, [m for m, v in sys.modules.items() if "opentelemetry" in m and v]]))
"""


@pytest.mark.django_db(transaction=True)
def test_without_opentelemetry_nothing_is_imported_and_sequences_run():
    env = Workers(Path()).env({"DJANGO_SETTINGS_MODULE": "testproject.settings"})
    env["SEQUENCE_TESTING"] = "true"
    out = subprocess.run(
        [sys.executable, "-c", "import json" + WITHOUT_OTEL], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1]) == ["completed", "", []]


@pytest.mark.django_db(transaction=True)
def test_a_forking_workers_spans_join_the_trace_start_ran_in(workers, tmp_path, exporter):
    # exporter: this process has a tracer provider, so the span start() runs in records.
    traces = tmp_path / "spans.jsonl"
    workers.start(kind="fork", env={"TRACES_FILE": str(traces)})
    with trace.get_tracer("shop").start_as_current_span("signup") as parent:
        seq = FlakySequence.start({"fail_times": 1})
    seq.wait(30)

    def written() -> list[dict[str, object]]:
        lines = traces.read_text().splitlines() if traces.exists() else []
        return [json.loads(line) for line in lines] if len(lines) >= 4 else []

    spans = wait_for(written)  # the last span ends just after the sequence completed
    assert [(s["step"], s["attempt"], s["outcome"], s["status"]) for s in spans] == [
        ("A", 1, "succeeded", "UNSET"),
        ("Flaky", 1, "failed", "ERROR"),
        ("Flaky", 2, "succeeded", "UNSET"),
        ("C", 1, "succeeded", "UNSET"),
    ]
    assert {s["trace_id"] for s in spans} == {parent.get_span_context().trace_id}
    assert {s["sequence"] for s in spans} == {seq.id}
