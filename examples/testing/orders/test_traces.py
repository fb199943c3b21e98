import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sequence.testing import drain

from .sequences import OrderSequence


@pytest.fixture(scope="session")
def exporter():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # a process sets its provider once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(autouse=True)
def sequence_testing(settings):
    settings.SEQUENCE_TESTING = True


def test_each_step_is_a_span_in_the_checkout_trace(db, exporter):
    exporter.clear()
    with trace.get_tracer("shop").start_as_current_span("checkout") as checkout:
        seq = OrderSequence(sku="tea", quantity=2, amount=30)
    drain()
    steps = [s for s in exporter.get_finished_spans() if s.name == "sequence.step"]
    assert [s.attributes["sequence.step"] for s in steps] == [
        "ReserveStock", "ChargeCard", "send_receipt",
    ]  # fmt: skip
    for span in steps:
        assert span.context.trace_id == checkout.get_span_context().trace_id
        assert span.attributes["sequence.id"] == seq.id
        assert span.attributes["sequence.outcome"] == "succeeded"
