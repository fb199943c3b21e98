"""What the handle shows: progress, and waiting for the end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sequence.exceptions import SequenceCanceled, SequenceFailed, SequenceTimeout
from sequence.states import Status

if TYPE_CHECKING:
    from sequence.definitions import Sequence


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps; prints as ``2/3``."""

    done: int
    total: int

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else self.done * 100 // self.total

    def __str__(self) -> str:
        return f"{self.done}/{self.total}"


def wait(handle: Sequence, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        handle.refresh()
        if handle.status == Status.COMPLETED:
            return handle.data
        if handle.status == Status.FAILED:
            raise SequenceFailed(f"{handle.name} #{handle.id} failed: {handle.error}")
        if handle.status == Status.CANCELED:
            raise SequenceCanceled(f"{handle.name} #{handle.id} was canceled.")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SequenceTimeout(
                f"{handle.name} #{handle.id} is still {handle.status} at step "
                f"{handle.current_step!r} after {timeout}s; wait longer or check its workers."
            )
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.25)
