"""``Schedule``: start a sequence on a cron schedule; ``SkipTick`` when a tick's data
cannot be made."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sequence.declare.cron import check_cron
from sequence.declare.exceptions import SequenceError


@dataclass(frozen=True)
class Schedule:
    """Start a sequence on a cron schedule, in ``settings.TIME_ZONE``."""

    name: str
    cron: str
    data: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        check_cron(self.name, self.cron)

    def make_data(self) -> dict[str, Any]:
        """The tick's data; SkipTick (from the error) if the callable raises."""
        try:
            data = self.data() if callable(self.data) else self.data
            return dict(data or {})
        except Exception as exc:
            raise SkipTick(f"schedule {self.name!r}: its data callable raised: {exc!r}") from exc


class SkipTick(SequenceError):
    """A schedule's data could not be made: that tick is skipped (internal)."""
