"""What the admin and the command show of a sequence's ForEach elements: how many are
done of all, the ones that failed for good with their errors, and the compensated ones.

Read from the element rows in at most three queries whatever the number of elements:
the counts per ForEach and status, then (only when there are some) the failed elements
and the compensated ones, each read to a bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet

from sequence.declare.masking import mask_data, mask_text
from sequence.models import ItemStatus, SequenceItem, SequenceRecord

# Failed elements listed with their errors; more are counted, not listed.
MAX_FAILED = 50
# Compensated positions read to name them as ranges ("0-36, 40"); more are counted.
MAX_COMPENSATED = 1000
# An element's value as shown beside its error, in characters.
ITEM_CHARS = 80
BUSY = (ItemStatus.QUEUED, ItemStatus.RUNNING, ItemStatus.RETRYING)


@dataclass(frozen=True)
class FailedElement:
    """An element that failed for good: its position, value, attempts and error."""

    index: int
    item: str  # its value in the list, masked and shortened ("" if the list is gone)
    attempts: int
    error: str  # masked

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "item": self.item, "attempts": self.attempts,
                "error": self.error}  # fmt: skip


@dataclass(frozen=True)
class Elements:
    """The elements of one ForEach of a sequence's plan."""

    step_index: int
    step: str
    total: int
    # Completed: those since compensated included (they did complete).
    done: int
    failed: int
    running: int  # queued, running or retrying
    compensated: int
    failures: tuple[FailedElement, ...] = ()
    compensated_at: tuple[int, ...] = ()  # the first MAX_COMPENSATED positions

    @property
    def percent(self) -> int:
        return self.done * 100 // self.total if self.total else 100

    @property
    def more_failed(self) -> int:
        """Failed elements not listed in ``failures``."""
        return self.failed - len(self.failures)

    @property
    def compensated_ranges(self) -> str:
        """The compensated positions as ranges, ``0-36, 40`` (``and N more`` past the bound)."""
        spans: list[list[int]] = []
        for index in self.compensated_at:
            if spans and index == spans[-1][1] + 1:
                spans[-1][1] = index
            else:
                spans.append([index, index])
        text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
        rest = self.compensated - len(self.compensated_at)
        return f"{text} and {rest} more" if rest > 0 else text

    def __str__(self) -> str:
        """``37/100 done, 1 failed, 2 running, 37 compensated``: the parts that are not 0."""
        parts = [f"{self.done}/{self.total} done"]
        parts += [
            f"{count} {label}"
            for count, label in (
                (self.failed, "failed"),
                (self.running, "running"),
                (self.compensated, "compensated"),
            )
            if count
        ]
        return ", ".join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "step_index": self.step_index, "step": self.step, "total": self.total,
            "done": self.done, "failed": self.failed, "running": self.running,
            "compensated": self.compensated, "compensated_ranges": self.compensated_ranges,
            "failures": [f.as_json() for f in self.failures], "more_failed": self.more_failed,
        }  # fmt: skip


def foreach_key(name: str) -> str | None:
    """The data key of the ForEach a stored plan names (``ForEach {"key": ...}``), else None."""
    base, _, raw = name.partition(" ")
    if base.rsplit(".", 1)[-1] != "ForEach":
        return None
    try:
        params = json.loads(raw)
    except ValueError:
        return None
    key = params.get("key") if isinstance(params, dict) else None
    return key if isinstance(key, str) else None


def _item(record: SequenceRecord, key: str | None, index: int) -> str:
    items = record.data.get(key) if key is not None else None
    if not isinstance(items, list) or not 0 <= index < len(items):
        return ""
    text = json.dumps(mask_data(items[index]), ensure_ascii=False, default=str)
    return text if len(text) <= ITEM_CHARS else text[: ITEM_CHARS - 1] + "…"


def _failed(
    record: SequenceRecord, rows: QuerySet[SequenceItem], keys: dict[int, str]
) -> dict[int, list[FailedElement]]:
    """The first MAX_FAILED elements that failed for good, by plan index (one query)."""
    failed: dict[int, list[FailedElement]] = {}
    listed = rows.filter(status=ItemStatus.FAILED).order_by("step_index", "index")
    fields = ("step_index", "index", "attempt", "error")
    for step_index, index, attempts, error in listed.values_list(*fields)[:MAX_FAILED]:
        item = _item(record, keys.get(step_index), index)
        failed.setdefault(step_index, []).append(
            FailedElement(index, item, attempts, mask_text(error, record.data))
        )
    return failed


def _compensated(rows: QuerySet[SequenceItem]) -> dict[int, list[int]]:
    """The first MAX_COMPENSATED compensated positions, by plan index (one query)."""
    undone: dict[int, list[int]] = {}
    listed = rows.filter(status=ItemStatus.UNDONE).order_by("step_index", "index")
    for step_index, index in listed.values_list("step_index", "index")[:MAX_COMPENSATED]:
        undone.setdefault(step_index, []).append(index)
    return undone


def of(record: SequenceRecord) -> list[Elements]:
    """The elements of each ForEach of the plan that made some, in plan order."""
    keys = {i: key for i, name in enumerate(record.plan) if (key := foreach_key(str(name)))}
    if not keys:
        return []  # no query for a plan without a ForEach
    rows = SequenceItem.objects.filter(sequence_id=record.pk)
    counts: dict[int, dict[str, int]] = {}
    grouped = rows.values_list("step_index", "status").annotate(n=Count("pk")).order_by()
    for step_index, status, n in grouped:
        counts.setdefault(step_index, {})[status] = n
    some = {status for c in counts.values() for status, n in c.items() if n}
    failed = _failed(record, rows, keys) if ItemStatus.FAILED in some else {}
    undone = _compensated(rows) if ItemStatus.UNDONE in some else {}
    shown = []
    for step_index, c in sorted(counts.items()):
        name = record.plan[step_index] if step_index < len(record.plan) else str(step_index)
        shown.append(
            Elements(
                step_index=step_index,
                step=str(name),
                total=sum(c.values()),
                done=c.get(ItemStatus.DONE, 0) + c.get(ItemStatus.UNDONE, 0),
                failed=c.get(ItemStatus.FAILED, 0),
                running=sum(c.get(status, 0) for status in BUSY),
                compensated=c.get(ItemStatus.UNDONE, 0),
                failures=tuple(failed.get(step_index, ())),
                compensated_at=tuple(undone.get(step_index, ())),
            )
        )
    return shown
