"""The checker: after a fault test, the journal and the evidence tables must agree.

Invariants, for every sequence the test started:

1. The journal is one unbroken chain: each change starts from the state the previous
   one left (nothing changed the row unrecorded), and the epoch never goes down.
2. A claim starts only from pending, retrying or (a requeued job) failed: never while
   the sequence is paused, canceled, completed, or held by another claim.
3. A commit moves exactly one step, bumps the epoch, and happens under the epoch and
   token of the latest claim, with no fencing in between (no commit under a stale epoch).
4. Commits are 0, 1, 2, ... in order, each once; a completed sequence has one per
   step, and one succeeded attempt per step in the history.
5. Every body run (BodyRun) happened under a claim of its step and epoch (no step body
   ran for a stale job, or after its step was done).
6. Atomic steps (Effect) and idempotency-ledger steps (Payment) show their effect once
   per committed step, and never for an uncommitted one.
7. Nothing is stuck: every sequence ended in a status the test expected.
9. ForEach elements: each recorded as succeeded once; a completed sequence has all.
8. Compensations: once a walk ended, every completed step that defines compensate() has
   exactly one final record (compensated, or its last compensation_failed), none is
   compensated twice, and they ran last step first; a compensation is claimed only
   while the sequence is compensating.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from django.db import connection
from django.db.models import Count

from sequence.engine.states import Outcome, Status
from sequence.models import SequenceItem, SequenceRecord, StepAttempt
from testproject.testapp.models import BodyRun, Effect, Journal, Payment

OUTPUT = Path(os.environ.get("TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))

CLAIMABLE = {Status.PENDING, Status.RETRYING, Status.FAILED}
HOLDING = {Status.RUNNING, Status.PAUSED, Status.CANCELED}
ATOMIC_STEPS = {"AtomicWork"}
LEDGER_STEPS = {"Pay"}


@dataclass
class Report:
    test: str
    database: str
    sequences: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    steps_committed: int = 0
    claims: int = 0
    fencings: int = 0
    dispatches_confirmed: int = 0
    recoveries: int = 0
    body_runs: int = 0
    body_reruns: int = 0
    faults: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check(
    test: str,
    seq_ids: Iterable[int],
    *,
    expect: dict[int, set[str]] | set[str] | None = None,
    faults: dict[str, Any] | None = None,
    write: bool = True,
) -> Report:
    """Check every invariant for ``seq_ids``; ``expect`` maps ids to allowed final statuses."""
    ids = sorted(set(seq_ids))
    report = Report(test=test, database=connection.vendor, sequences=len(ids), faults=faults or {})
    records = {r.pk: r for r in SequenceRecord.objects.filter(pk__in=ids)}
    journal: dict[int, list[Journal]] = defaultdict(list)
    for row in Journal.objects.filter(seq_id__in=ids).order_by("id"):
        journal[row.seq_id].append(row)
    succeeded: dict[int, Counter[int]] = defaultdict(Counter)
    for seq_id, index in StepAttempt.objects.filter(
        sequence_id__in=ids, outcome="succeeded", item__isnull=True
    ).values_list("sequence_id", "step_index"):
        succeeded[seq_id][index] += 1
    report.recoveries = StepAttempt.objects.filter(sequence_id__in=ids, outcome="lost").count()
    runs: dict[int, list[BodyRun]] = defaultdict(list)
    for run in BodyRun.objects.filter(seq_id__in=ids).exclude(note__in=["fenced", "after-swallow"]):
        runs[run.seq_id].append(run)
    effects = Counter(Effect.objects.filter(seq_id__in=ids).values_list("seq_id", "step"))
    payments = Counter(Payment.objects.filter(seq_id__in=ids).values_list("seq_id", "step"))
    keys = set(Payment.objects.filter(seq_id__in=ids).values_list("key", flat=True))
    statuses: Counter[str] = Counter()
    v = report.violations

    for seq_id in ids:
        record = records.get(seq_id)
        if record is None:
            v.append(f"#{seq_id}: row missing")
            continue
        statuses[record.status] += 1
        events = journal[seq_id]
        plan = record.plan
        if not events or events[0].op != "I":
            v.append(f"#{seq_id}: journal does not start with the insert")
            continue
        first = events[0]
        state = (first.new_status, first.new_epoch, first.new_step, first.new_token, first.new_due)
        claim: tuple[int, str] | None = None  # (epoch, token) of the latest claim
        claimed: set[tuple[int, int]] = set()  # (step, epoch) of every claim
        commits: list[int] = []
        for event in events[1:]:
            old = (
                event.old_status,
                event.old_epoch,
                event.old_step,
                event.old_token,
                event.old_due,
            )
            if old != state:
                v.append(f"#{seq_id}: journal {event.id} starts from {old}, not {state}")
            if event.new_epoch < event.old_epoch:
                v.append(f"#{seq_id}: epoch went down at journal {event.id}")
            state = (
                event.new_status,
                event.new_epoch,
                event.new_step,
                event.new_token,
                event.new_due,
            )
            is_claim = (
                event.new_status == Status.RUNNING
                and event.new_token is not None
                and event.new_token != event.old_token
            )
            if is_claim:
                report.claims += 1
                if event.old_status not in CLAIMABLE or event.old_token is not None:
                    v.append(
                        f"#{seq_id}: step {event.new_step} claimed while {event.old_status}"
                        f" (token {event.old_token})"
                    )
                if (event.new_epoch, event.new_step) != (event.old_epoch, event.old_step):
                    v.append(f"#{seq_id}: a claim moved the epoch or step (journal {event.id})")
                claim = (event.new_epoch, event.new_token)
                claimed.add((event.new_step, event.new_epoch))
            elif event.new_step == event.old_step + 1:
                commits.append(event.old_step)
                if event.new_epoch != event.old_epoch + 1:
                    v.append(f"#{seq_id}: commit of step {event.old_step} did not bump the epoch")
                if event.old_status not in HOLDING:
                    v.append(f"#{seq_id}: commit of step {event.old_step} from {event.old_status}")
                if claim is None or claim != (event.old_epoch, event.old_token):
                    v.append(
                        f"#{seq_id}: commit of step {event.old_step} under epoch "
                        f"{event.old_epoch} token {event.old_token}, latest claim {claim}"
                    )
                claim = None
            elif event.new_step != event.old_step:
                v.append(f"#{seq_id}: step moved {event.old_step} -> {event.new_step}")
            elif event.new_epoch > event.old_epoch:
                report.fencings += 1
                claim = None
            if event.old_due and not event.new_due and event.new_epoch == event.old_epoch:
                report.dispatches_confirmed += 1
        report.steps_committed += len(commits)
        if commits != list(range(len(commits))):
            v.append(f"#{seq_id}: commits out of order or repeated: {commits}")
        done = len(plan) if record.status == Status.COMPLETED else record.step_index
        if len(commits) != done:
            v.append(f"#{seq_id}: {len(commits)} commits, row says {done} steps done")
        if record.status == Status.COMPLETED and record.step_index != len(plan):
            v.append(f"#{seq_id}: completed at step {record.step_index} of {len(plan)}")
        once = succeeded[seq_id]
        if sorted(once) != list(range(done)) or any(n != 1 for n in once.values()):
            v.append(f"#{seq_id}: succeeded attempts per step {dict(once)}, {done} steps done")
        for run in runs[seq_id]:
            report.body_runs += 1
            if (run.step_index, run.epoch) not in claimed:
                v.append(f"#{seq_id}: {run.step} ran at epoch {run.epoch} without a claim")
        per_step = Counter(r.step_index for r in runs[seq_id])
        report.body_reruns += sum(n - 1 for n in per_step.values())
        for index, name in enumerate(plan):
            committed = index < done
            short = name.rsplit(".", 1)[-1]
            if short in ATOMIC_STEPS:
                n = effects[(seq_id, short)]
                if n != (1 if committed else 0):
                    v.append(
                        f"#{seq_id}: atomic {short} took effect {n} times (committed={committed})"
                    )
            if short in LEDGER_STEPS:
                n = payments[(seq_id, short)]
                if committed and n != 1:
                    v.append(f"#{seq_id}: {short} charged {n} times")
                if n and f"{seq_id}:{index}:{name}" not in keys:
                    v.append(f"#{seq_id}: {short} charged under an unexpected key")
        allowed = expect.get(seq_id) if isinstance(expect, dict) else expect
        if allowed is None:
            allowed = {Status.COMPLETED}
        if record.status not in allowed:
            v.append(
                f"#{seq_id}: ended {record.status} at step {record.step_index}, expected {sorted(allowed)}"
            )
        v.extend(_compensation_violations(record))
        v.extend(_element_violations(record))
    report.statuses = dict(statuses)
    if write:
        _write(report)
    return report


def _element_violations(record: SequenceRecord) -> list[str]:
    """Invariant 9: each ForEach element of a completed sequence succeeded exactly once in
    the history, and its result is in place."""
    found = []
    rows = StepAttempt.objects.filter(
        sequence_id=record.pk, item__isnull=False, outcome=Outcome.SUCCEEDED
    )
    per_item = Counter(rows.values_list("step_index", "item"))
    found += [f"#{record.pk}: element {k} recorded {n} times" for k, n in per_item.items() if n > 1]
    if record.status != Status.COMPLETED:
        return found
    for step_index, total in (
        SequenceItem.objects.filter(sequence_id=record.pk)
        .values_list("step_index")
        .annotate(n=Count("pk"))
    ):
        done = sum(1 for (s, _k) in per_item if s == step_index)
        if done != total:
            found.append(f"#{record.pk}: {done} of {total} elements recorded at step {step_index}")
    return found


def _compensation_violations(record: SequenceRecord) -> list[str]:
    """Invariant 8 for one sequence."""
    from sequence.declare.registry import registered

    seq_id = record.pk
    rows = list(
        StepAttempt.objects.filter(
            sequence_id=seq_id,
            outcome__in=[Outcome.COMPENSATED, Outcome.COMPENSATION_FAILED],
        ).order_by("id")
    )
    found = []
    compensated = Counter(r.step_index for r in rows if r.outcome == Outcome.COMPENSATED)
    found += [f"#{seq_id}: step {i} compensated {n} times" for i, n in compensated.items() if n > 1]
    order = list(dict.fromkeys(r.step_index for r in rows))
    if order != sorted(order, reverse=True):
        found.append(f"#{seq_id}: compensations out of order: {order}")
    if record.undo_index != -1:
        return found
    cls = registered().get(record.name)
    undoable = [
        i
        for i in range(record.step_index)
        if cls is not None
        and (spec := cls.step_named(record.plan[i])) is not None
        and spec.compensates
    ]
    if sorted(set(order)) != undoable:
        found.append(f"#{seq_id}: compensated {sorted(set(order))}, should be {undoable}")
    return found


def _write(report: Report) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    line = {**asdict(report), "violations": report.violations[:20], "ok": report.ok}
    with (OUTPUT / f"faults-{report.database}.jsonl").open("a") as out:
        out.write(json.dumps(line, sort_keys=True) + "\n")


def assert_ok(report: Report) -> None:
    """Fail the test with the first violations, if any."""
    assert report.ok, f"{len(report.violations)} violations:\n" + "\n".join(report.violations[:30])
