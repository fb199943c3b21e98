"""``Retry``: how often a failing step runs again, how long to wait, and for which errors."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

from sequence.declare.exceptions import ConfigurationError, Fail

if TYPE_CHECKING:
    import rq


def _seconds(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


# The longest wait before a retry: RQ holds the job in its scheduled registry meanwhile.
MAX_WAIT = 365 * 24 * 3600


@dataclass(frozen=True)
class Retry:
    """How often a failing step runs again, and how long to wait before each retry.

    The n-th retry waits ``interval * backoff**(n-1)`` seconds (or ``interval[n-1]`` when
    ``interval`` is a list, whose last value repeats once it runs out), capped at
    ``max_interval``, then spread by up to ``±jitter`` of itself at random. Only
    exceptions that are instances of ``on`` are retried; any other, and ``Fail``, fails
    the step at once.
    """

    max: int
    interval: float | Iterable[float] = 0
    _: KW_ONLY
    backoff: float = 1.0
    max_interval: float | None = None
    jitter: float = 0.0
    on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        def refuse(field: str, value: object, fix: str) -> ConfigurationError:
            return ConfigurationError(f"Retry({field}={value!r}): {fix}")

        if not isinstance(self.max, int) or isinstance(self.max, bool) or self.max < 0:
            raise refuse("max", self.max, "max must be 0 or more (the number of retries).")
        single = isinstance(self.interval, int | float) and not isinstance(self.interval, bool)
        intervals = [self.interval] if single else _listed(self.interval)
        if not intervals or not all(_seconds(i) for i in intervals):
            raise refuse(
                "interval", self.interval, "give seconds as a number >= 0 or a list of them."
            )
        if not _seconds(self.backoff) or self.backoff < 1:
            raise refuse("backoff", self.backoff, "give a factor >= 1 (1: no backoff).")
        if self.max_interval is not None and not _seconds(self.max_interval):
            raise refuse("max_interval", self.max_interval, "give seconds >= 0, or None.")
        if not _seconds(self.jitter) or self.jitter > 1:
            raise refuse("jitter", self.jitter, "give a fraction from 0 to 1 (0.2: ±20%).")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(e, type) and issubclass(e, BaseException) for e in on):
            raise refuse("on", self.on, "give an exception class or a tuple of them.")
        object.__setattr__(self, "interval", tuple(intervals) if not single else self.interval)
        object.__setattr__(self, "on", on)
        # The longest wait: the last, as backoff >= 1; for a list, any of those used.
        used = range(1, min(self.max, len(intervals)) + 1) if not single else (self.max,)
        longest = max((self.delay(n) for n in used if n > 0), default=0.0)
        if longest > MAX_WAIT:
            raise refuse(
                "max_interval", self.max_interval,
                f"a retry would wait {longest:.3g} s, over a year: cap the waits with "
                "max_interval (seconds), or retry fewer times.",
            )  # fmt: skip

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

    def delay(self, n: int) -> float:
        """Seconds before the n-th retry (n from 1), before jitter."""
        if isinstance(self.interval, tuple):
            wait = float(self.interval[min(n, len(self.interval)) - 1])
        else:
            try:
                wait = float(self.interval) * self.backoff ** (n - 1)  # type: ignore[arg-type]
            except OverflowError:  # past a float's range: longer than any cap
                wait = math.inf
        return wait if self.max_interval is None else min(wait, self.max_interval)

    def delays(self) -> list[int]:
        """The wait before each retry, in whole seconds (RQ's unit), jitter drawn now."""
        waits = []
        for n in range(1, self.max + 1):
            wait = self.delay(n)
            if self.jitter:
                wait *= 1 + random.uniform(-self.jitter, self.jitter)
            waits.append(max(0, round(wait)))
        return waits

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is one this policy retries (``Fail`` never is)."""
        return not isinstance(exc, Fail) and isinstance(exc, self.on)

    def after_first(self) -> tuple[int, Retry]:
        """The wait before the first retry, and what is left to retry after it."""
        first, *rest = self.delays()
        return first, Retry(max=self.max - 1, interval=rest or [first], on=self.on)

    def to_rq(self) -> rq.Retry | None:
        """The RQ Retry that waits as documented above.

        RQ reads its interval list as ``intervals[len - retries_left]``: a list as long as
        ``max`` is read in order. Jitter is drawn when the job is queued.
        """
        from rq import Retry as RQRetry

        if self.max == 0:
            return None
        return RQRetry(max=self.max, interval=self.delays())


def _listed(value: object) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return []
    return list(value)
