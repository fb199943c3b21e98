"""What follows a move: queue the sequence's next unit, or announce how it ended.

Every caller that changed a sequence's status (the runner, a ForEach's last element, a
wake-up, a compensation's end, the sweep, a person's cancel) calls ``after_move`` once
its transaction committed, with the ``Move`` its statement reported. So the rules live
here once: ``on_complete`` and ``sequence_completed`` follow only a move *into*
``completed``; a move that found the sequence paused or canceled and left it so (a step
that committed after a cancel, say) announces nothing, since the cancel announced
itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sequence import signals
from sequence.declare.registry import registered
from sequence.engine import hooks, places
from sequence.engine.rq.dispatch import dispatch_record
from sequence.engine.states import HELD, MOVING, TERMINAL, Status

if TYPE_CHECKING:
    from sequence.declare.definitions import SequenceDefinition
    from sequence.models import SequenceRecord


@dataclass(frozen=True)
class Move:
    """What a statement found the sequence in, and what it left it in."""

    found: Status
    now: Status

    @classmethod
    def of_claim(cls, now: Status) -> Move:
        """The move of a statement on a claimed unit that reports only where it left the
        sequence: left paused or canceled, it found it so (a claim is taken only from a
        running sequence, and neither status is entered by a worker)."""
        return cls(now if now in HELD else Status.RUNNING, now)

    @property
    def entered(self) -> Status | None:
        """The status this move brought the sequence into; None if it stayed."""
        return self.now if self.now != self.found else None


def after_move(
    record: SequenceRecord,
    move: Move,
    cls: type[SequenceDefinition] | None = None,
    *,
    queue: bool = True,
) -> None:
    """After ``move`` committed on ``record`` (as the move left it): queue the unit that
    is due (unless ``queue`` is False: the caller queued it, or runs it itself), or send
    the end's hook and signal, once, for the move that made the end. An end (or a move
    back into ``queued``) gives a free place of its Concurrency key to the next queued
    sequence."""
    if move.now in MOVING:
        if queue:
            dispatch_record(record)
        return
    if move.entered == Status.QUEUED:
        places.free_of(cls, record)
    if move.now not in TERMINAL or move.entered is None:
        return
    cls = cls or registered().get(record.name)
    if cls is None:
        return
    places.free_of(cls, record)
    handle = cls._bind(record)
    if move.now == Status.COMPLETED:
        hooks.call(handle.on_complete)
        hooks.send(signals.sequence_completed, cls, sequence=handle)
    elif move.now == Status.FAILED:
        announce_failure(handle, record.error)
    else:
        hooks.send(signals.sequence_canceled, cls, sequence=handle)


def announce_failure(handle: SequenceDefinition, error: str) -> None:
    """After a sequence failed for good (and its compensations ran): the hook, the signal."""
    hooks.call(handle.on_failure, error)
    hooks.send(signals.sequence_failed, type(handle), sequence=handle, error=error)
