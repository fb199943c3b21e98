"""What a worker shows of the unit it runs: a span in the sequence's trace, and the
sequence named on every log line.

With OpenTelemetry's API installed (``django-rq-sequence[otel]``), ``start()`` records
the trace it was called in on the record (a W3C ``traceparent``), and each attempt at a
step, a compensation or a ForEach element is a span ``sequence.step`` whose parent is
that context, on whichever worker runs it: retries and wake-ups stay in the one trace.
Without it nothing imports it, and ``attempt()`` only names the sequence in the logs.

The log fields (``sequence_id``, ``sequence_name``, ``sequence_step``,
``sequence_attempt``, and ``sequence_element`` for an element) are added by a filter on
the ``sequence`` logger to every line written while a unit runs, so that a JSON
formatter shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from sequence.engine.rq.dispatch import ITEM, UNDO
from sequence.engine.states import Outcome

if TYPE_CHECKING:
    from sequence.models import SequenceRecord

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR = TraceContextTextMapPropagator()
except ImportError:  # the [otel] extra is not installed: no spans, nothing imported
    trace = None  # type: ignore[assignment]

SPAN = "sequence.step"


class _Unit:
    """The unit of work running in this context: its log fields, and its span's outcome."""

    __slots__ = ("fields", "outcome", "span")

    def __init__(self, fields: dict[str, Any], outcome: str, span: Any = None) -> None:
        self.fields = fields
        self.outcome = outcome
        self.span = span


_unit: ContextVar[_Unit | None] = ContextVar("sequence_unit", default=None)


def traceparent(name: str) -> str:
    """The trace context ``start()`` records: the caller's span, or else a root span
    ``sequence.start`` of its own (so its attempts still share one trace); ``""``
    without OpenTelemetry or a tracer provider that records."""
    if trace is None:
        return ""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        span = _tracer().start_span("sequence.start", attributes={"sequence.name": name})
        span.end()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


@contextmanager
def attempt(
    record: SequenceRecord, index: int, attempt: int, kind: str, element: int | None = None
) -> Iterator[None]:
    """One attempt at a unit (``kind``: step, undo or item) of ``record``'s plan item
    ``index``: named on the log lines written meanwhile, and a span with OpenTelemetry.

    The span ends with the outcome its history row records: succeeded (compensated, for
    a compensation) unless ``failed()`` said otherwise or an error escaped.
    """
    fields = log_fields(record.pk, record.name, record.plan[index], attempt, element)
    unit = _Unit(fields, Outcome.COMPENSATED if kind == UNDO else Outcome.SUCCEEDED)
    if trace is None:
        token = _unit.set(unit)
        try:
            yield
        finally:
            _unit.reset(token)
        return
    attributes: dict[str, Any] = {
        "sequence.id": record.pk,
        "sequence.name": record.name,
        "sequence.step": record.plan[index],
        "sequence.attempt": attempt,
        "sequence.kind": kind,
    }
    if kind == ITEM and element is not None:
        attributes["sequence.element"] = element
    parent = _PROPAGATOR.extract({"traceparent": record.traceparent})
    with _tracer().start_as_current_span(
        SPAN, context=parent, attributes=attributes,
        record_exception=False, set_status_on_exception=False,
    ) as span:  # fmt: skip
        unit.span = span
        token = _unit.set(unit)
        try:
            yield
        except BaseException as exc:
            if unit.outcome in (Outcome.SUCCEEDED, Outcome.COMPENSATED):
                # Not a failure the attempt recorded (its error is masked there): the
                # error's type only, as its message may hold a secret.
                failed(type(exc).__name__)
            raise
        finally:
            _unit.reset(token)
            span.set_attribute("sequence.outcome", str(unit.outcome))


def failed(error: str, outcome: str = Outcome.FAILED) -> None:
    """The attempt running here failed with ``error`` (masked): its span says so."""
    unit = _unit.get()
    if unit is None:
        return
    unit.outcome = outcome
    if unit.span is not None:
        unit.span.set_status(trace.Status(trace.StatusCode.ERROR, error))


def log_fields(
    sequence_id: int,
    name: str | None = None,
    step: str | None = None,
    attempt: int | None = None,
    element: int | None = None,
) -> dict[str, Any]:
    """The fields naming a sequence on a log record (``extra=``), those that are known:
    for a line written outside a running unit (a stale job, the wake pass)."""
    fields = {
        "sequence_id": sequence_id, "sequence_name": name, "sequence_step": step,
        "sequence_attempt": attempt, "sequence_element": element,
    }  # fmt: skip
    return {key: value for key, value in fields.items() if value is not None}


def flush() -> None:
    """Export the spans a batching processor still holds: for a process about to end
    with ``os._exit`` (a forked work-horse), which runs no exit handler."""
    if trace is not None:
        force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
        if force_flush is not None:
            force_flush()


def _tracer() -> Any:
    return trace.get_tracer("sequence")


class SequenceFields(logging.Filter):
    """Adds the running unit's sequence fields to a log record that has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        unit = _unit.get()
        if unit is not None:
            for name, value in unit.fields.items():
                record.__dict__.setdefault(name, value)
        return True


def install(name: str = "sequence") -> None:
    """Add SequenceFields to the named logger, once."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, SequenceFields) for f in logger.filters):
        logger.addFilter(SequenceFields())


# The runner imports this module: a worker's lines name their sequence from the first on.
install()
