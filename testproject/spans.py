"""A worker's spans, one JSON line each, in the file ``TRACES_FILE`` names
(tests/test_traces.py reads them: a worker is another process).

Batched, as in production, and never on a timer: a forking worker's horse must flush
its spans itself before it ends."""

from __future__ import annotations

import json
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class FileExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a") as out:
            for span in spans:
                a = span.attributes or {}
                line = {
                    "sequence": a.get("sequence.id"), "step": a.get("sequence.step"),
                    "attempt": a.get("sequence.attempt"), "outcome": a.get("sequence.outcome"),
                    "status": span.status.status_code.name,
                    "trace_id": span.context.trace_id if span.context else None,
                }  # fmt: skip
                out.write(json.dumps(line) + "\n")
        return SpanExportResult.SUCCESS


def install(path: str) -> None:
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(FileExporter(path), schedule_delay_millis=3_600_000)
    )
    trace.set_tracer_provider(provider)
