"""``Retry``: how often a failing step runs again, and how long to wait before each retry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sequence.exceptions import ConfigurationError

if TYPE_CHECKING:
    import rq


@dataclass(frozen=True)
class Retry:
    """How often a failing step runs again, and how long to wait before each retry.

    ``interval`` is one number of seconds, or a list read in order: the n-th retry
    waits ``interval[n-1]``, and the last value repeats once the list runs out.
    """

    max: int
    interval: int | Iterable[int] = 0

    def __post_init__(self) -> None:
        if self.max < 0:
            raise ConfigurationError(f"Retry(max={self.max!r}): max must be 0 or more.")
        intervals = [self.interval] if isinstance(self.interval, int) else list(self.interval)
        if not intervals or any(not isinstance(i, int) or i < 0 for i in intervals):
            raise ConfigurationError(
                f"Retry(interval={self.interval!r}): give seconds as an int or a list of ints >= 0."
            )
        object.__setattr__(self, "interval", tuple(intervals))

    @classmethod
    def coerce(cls, value: Retry | Mapping[str, Any] | int | None) -> Retry:
        """Accept a Retry, a dict of its arguments, or a number of retries."""
        if isinstance(value, Retry):
            return value
        if value is None:
            return cls(max=0)
        if isinstance(value, int):
            return cls(max=value)
        return cls(**value)

    def after_first(self) -> tuple[int, Retry]:
        """The wait before the first retry, and what is left to retry after it."""
        intervals = list(self.interval)  # type: ignore[arg-type]
        return intervals[0], Retry(max=self.max - 1, interval=intervals[1:] or intervals)

    def to_rq(self) -> rq.Retry | None:
        """The RQ Retry that waits as documented above."""
        from rq import Retry as RQRetry

        if self.max == 0:
            return None
        intervals = list(self.interval)  # type: ignore[arg-type]
        # RQ picks intervals[len - retries_left]: a list as long as max reads in order.
        padded = [intervals[min(i, len(intervals) - 1)] for i in range(self.max)]
        return RQRetry(max=self.max, interval=padded)
