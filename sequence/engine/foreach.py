"""Fan-out: a ForEach as it runs. One unit of work per element of a list.

The ForEach begins like a step (claimed by its job), creates one row per element and
queues the first ``concurrency`` of them; each element is then claimed, run, committed
and recovered like a step, with its own retries and history row. An element sees the
data as it was when the ForEach began; what it returns is stored on its row, and the
results are written into ``data[into]`` once, when the last element commits and moves
the sequence on (a ForEach of n elements costs O(n), not O(n²)).
"""

from __future__ import annotations

import logging
import traceback

from django.db import transaction

from sequence import signals
from sequence.declare.conf import settings
from sequence.declare.definitions import SequenceDefinition, StepSpec
from sequence.declare.exceptions import Fail
from sequence.declare.masking import mask_text
from sequence.declare.registry import get_sequence_class
from sequence.declare.validation import check_data
from sequence.engine import hooks, tracing, transitions
from sequence.engine.claims import Claim
from sequence.engine.failure import fail_for_good, final_because, undo_start
from sequence.engine.moves import Move, after_move
from sequence.engine.rq.dispatch import enqueue_items
from sequence.engine.transitions.base import Then
from sequence.engine.transitions.elements import ItemClaim
from sequence.models import ItemStatus, SequenceItem, SequenceRecord

logger = logging.getLogger("sequence")

_MISSING = object()


def begin(claim: Claim, cls: type[SequenceDefinition], spec: StepSpec) -> None:
    """Start a claimed ForEach: check its list, make its elements, queue the first ones."""
    each = spec.each
    assert each is not None
    record = claim.record
    items = record.data.get(each.key, _MISSING)
    where = f"ForEach over {each.key!r} (item {record.step_index + 1} of {record.name})"
    if items is _MISSING:
        fail_for_good(claim, cls, f"{where}: the data has no key {each.key!r}; set it to a list.")
        return
    if not isinstance(items, list):
        fail_for_good(
            claim, cls, f"{where}: data[{each.key!r}] is {type(items).__name__}, not a list."
        )
        return
    if len(items) > settings.MAX_ITEMS:
        fail_for_good(
            claim, cls, f"{where}: data[{each.key!r}] has {len(items)} elements, over "
            f"SEQUENCE_MAX_ITEMS ({settings.MAX_ITEMS}); split the list or raise the setting.",
        )  # fmt: skip
        return
    if not items:
        _finish(record.pk, cls, spec, claim.token)
        return
    queued = transitions.fanout.begin(claim, len(items), each.concurrency)
    logger.info(
        "Sequence %s #%s: ForEach over %r begins: %d elements, %d at a time.",
        record.name, record.pk, each.key, len(items), each.concurrency,
    )  # fmt: skip
    _dispatch(record, spec, queued)


def pump(record: SequenceRecord) -> None:
    """After a resume: queue elements into the free places of the running ForEach."""
    cls = get_sequence_class(record.name)
    spec = cls.step_named(record.plan[record.step_index])
    if spec is None or spec.each is None:
        return
    _dispatch(record, spec, transitions.fanout.pump(record, spec.each.concurrency))


def _dispatch(record: SequenceRecord, spec: StepSpec, positions: list[int]) -> None:
    enqueue_items(record.pk, record.step_index, record.epoch, record.queue, spec, positions)


def run_item(ic: ItemClaim, retries_left: int) -> None:
    """Run a claimed element and commit it. A failed attempt is recorded and re-raised for
    RQ (``ic.final`` says it failed for good: RQ must not retry it)."""
    record = ic.record
    cls = get_sequence_class(record.name)
    spec = cls.step_named(record.plan[record.step_index])
    assert spec is not None
    each = spec.each
    assert each is not None
    # Read for this element alone: its changes to the data are not saved.
    data = record.data
    step = spec.cls(
        data=data, sequence=cls._bind(record), attempt=ic.attempt,
        idempotency_key=f"{record.pk}:{record.step_index}:{each.step.__name__}[{ic.index}]",
        item=record.data[each.key][ic.index], index=ic.index,
    )  # fmt: skip
    try:
        result = step.perform()
        check_data({"result": result}, what=f"the result of element {ic.index}")
    except Exception as exc:
        _failed(ic, cls, spec, exc, retries_left)
        raise
    what, queued = transitions.elements.commit_item(ic, result, each.concurrency)
    logger.info(
        "Sequence %s #%s: element %d of ForEach over %r done (attempt %d).",
        record.name, record.pk, ic.index, each.key, ic.attempt,
    )  # fmt: skip
    _dispatch(record, spec, queued)
    if what == Then.FINISH:
        _finish(record.pk, cls, spec, record.claim_token or "")
    elif what == Then.FAIL:
        fail_sequence(record.pk, cls, spec)


def _failed(
    ic: ItemClaim, cls: type[SequenceDefinition], spec: StepSpec, exc: Exception, retries_left: int
) -> None:
    record = ic.record
    message = str(exc) if isinstance(exc, Fail) else f"{type(exc).__name__}: {exc}"
    error = mask_text(message, record.data)
    tb = mask_text(traceback.format_exc(), record.data)
    tracing.failed(error)
    reason = final_because(exc, spec, retries_left)
    name = f"{record.name} #{record.pk} element {ic.index} of {spec.base} (attempt {ic.attempt})"
    outcome = transitions.fanout.fail_item(ic, error, tb, will_retry=reason is None)
    ic.final = reason is not None
    if reason is None:
        logger.warning("Sequence %s failed: %s; RQ retries it.", name, error)
    else:
        logger.error("Sequence %s failed for good, as %s: %s", name, reason, error)
    if outcome == Then.FAIL:
        fail_sequence(record.pk, cls, spec)


def settle(record: SequenceRecord) -> None:
    """A ForEach with no element in flight that its last element's job did not move on
    (its worker died after the element's commit): finish it, or fail it. For the sweep."""
    cls = get_sequence_class(record.name)
    spec = cls.step_named(record.plan[record.step_index])
    if spec is None or spec.each is None:
        return
    if record.items_failed:
        fail_sequence(record.pk, cls, spec)
    elif record.items_done >= (record.items_total or 0):
        _finish(record.pk, cls, spec, record.claim_token or "")


def _finish(sequence_id: int, cls: type[SequenceDefinition], spec: StepSpec, token: str) -> None:
    """Every element succeeded: write the results once and move the sequence on."""
    record = SequenceRecord.objects.get(pk=sequence_id)
    each = spec.each
    assert each is not None
    data = dict(record.data)
    if each.into is not None:
        rows = SequenceItem.objects.filter(sequence_id=sequence_id, step_index=record.step_index)
        data[each.into] = list(rows.order_by("index").values_list("result", flat=True))
    with transaction.atomic():
        status = transitions.fanout.finish(record, data, token)
    if status is None:
        return
    record = SequenceRecord.objects.get(pk=sequence_id)
    hooks.send(
        signals.step_completed, cls, sequence=cls._bind(record), step=spec.name,
        step_index=record.step_index - 1, attempt=1,
    )  # fmt: skip
    after_move(record, Move.of_claim(status), cls)


def fail_sequence(sequence_id: int, cls: type[SequenceDefinition], spec: StepSpec) -> None:
    """An element failed for good and none is in flight: fail the sequence, compensating
    the elements that succeeded (and the completed steps before) first."""
    record = SequenceRecord.objects.get(pk=sequence_id)
    failed = (
        SequenceItem.objects.filter(
            sequence_id=sequence_id, step_index=record.step_index, status=ItemStatus.FAILED
        )
        .order_by("index")
        .first()
    )
    each = spec.each
    assert each is not None
    error = (
        f"ForEach over {each.key!r}: element {failed.index if failed else '?'} failed: "
        f"{failed.error if failed else 'unknown error'}"
    )
    undo = undo_start(record, cls, record.step_index + 1)
    with transaction.atomic():
        status = transitions.fanout.fail_fan_out(record, record.claim_token or "", error, undo)
    if status is None:
        return
    after_move(SequenceRecord.objects.get(pk=sequence_id), Move.of_claim(status), cls)
