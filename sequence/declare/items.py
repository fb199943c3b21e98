"""Plan items that are not code: ``Sleep`` and ``WaitFor``.

Each is stored in a sequence's plan by name and parameters (``Sleep {"seconds": 60}``),
so a sequence in flight keeps what it started with across deploys; ``from_params``
makes the item again from what the plan stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta
from typing import Any

from sequence.declare.exceptions import ConfigurationError, InvalidData
from sequence.declare.validation import check_data


def _seconds(value: object) -> float | None:
    """``value`` as seconds >= 0 (a number or a timedelta), or None if it is neither."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if value >= 0 else None
    return None


@dataclass(frozen=True)
class Sleep:
    """Wait for a while, durably: the sequence is ``sleeping`` until its wake-up time.

    ``Sleep(seconds=..., minutes=..., hours=..., days=...)``, or ``Sleep(until=callable)``
    where the callable takes the data and returns an aware ``datetime`` (or an ISO 8601
    string). The wake-up time is stored on the sequence's record.
    """

    seconds: float = 0
    minutes: float = 0
    hours: float = 0
    days: float = 0
    until: Callable[[dict[str, Any]], datetime | str] | None = None

    def __post_init__(self) -> None:
        amounts = {"seconds": self.seconds, "minutes": self.minutes, "hours": self.hours}
        amounts["days"] = self.days
        for unit, amount in amounts.items():
            if _seconds(amount) is None:
                raise ConfigurationError(
                    f"Sleep({unit}={amount!r}): give a number of {unit}, 0 or more."
                )
        if self.until is not None:
            if not callable(self.until):
                raise ConfigurationError(
                    f"Sleep(until={self.until!r}): give a callable taking the data and "
                    "returning an aware datetime."
                )
            if any(amounts.values()):
                raise ConfigurationError("Sleep takes either a duration or until=..., not both.")

    @property
    def duration(self) -> timedelta:
        return timedelta(
            seconds=self.seconds, minutes=self.minutes, hours=self.hours, days=self.days
        )

    def params(self) -> dict[str, Any]:
        """What the plan stores of it."""
        if self.until is not None:
            return {"until": f"{self.until.__module__}.{self.until.__qualname__}"}
        return {"seconds": self.duration.total_seconds()}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Sleep | None:
        """The Sleep a stored plan describes (None for ``until``: only code has it)."""
        seconds = _seconds(params.get("seconds"))
        return None if seconds is None else cls(seconds=seconds)

    def wakes_at(self, data: dict[str, Any], now: datetime, name: str) -> datetime:
        """When a sleep begun ``now`` ends; InvalidData if ``until`` gives no aware time."""
        if self.until is None:
            return now + self.duration
        try:
            value = self.until(dict(data))
        except Exception as exc:
            raise InvalidData(
                f"{name}: its until callable raised {type(exc).__name__}: {exc}"
            ) from exc
        returned = value
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidData(
                    f"{name}: its until callable returned {value!r}, which is not an ISO 8601 "
                    "date and time."
                ) from None
        if not isinstance(value, datetime) or value.tzinfo is None:
            what = "has no time zone" if isinstance(value, datetime) else "is not a datetime"
            raise InvalidData(
                f"{name}: its until callable returned {returned!r}, which {what}; return an "
                "aware datetime (with a time zone, e.g. django.utils.timezone.now() + "
                "timedelta(days=1)) or an ISO 8601 string with an offset."
            )
        return value


ON_TIMEOUT = ("fail", "continue")


@dataclass(frozen=True)
class WaitFor:
    """Wait for an event sent with ``seq.send(event, data)``: the sequence is ``waiting``.

    The event's data is merged into the sequence's data. After ``timeout`` (seconds or a
    timedelta; None waits for ever), ``on_timeout="fail"`` fails the sequence (its
    compensations run) and ``"continue"`` goes on without data.
    """

    event: str
    timeout: float | timedelta | None = None
    on_timeout: str = "fail"

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event or self.event != self.event.strip():
            raise ConfigurationError(
                f"WaitFor({self.event!r}): give the event's name, a non-empty string."
            )
        if self.timeout is not None and _seconds(self.timeout) is None:
            raise ConfigurationError(
                f"WaitFor({self.event!r}, timeout={self.timeout!r}): give seconds or a "
                "timedelta, or None to wait for ever."
            )
        if self.on_timeout not in ON_TIMEOUT:
            raise ConfigurationError(
                f"WaitFor({self.event!r}, on_timeout={self.on_timeout!r}): give "
                '"fail" or "continue".'
            )

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else _seconds(self.timeout)

    def params(self) -> dict[str, Any]:
        return {"event": self.event, "timeout": self.timeout_seconds, "on_timeout": self.on_timeout}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> WaitFor | None:
        try:
            return cls(
                str(params["event"]), params.get("timeout"), params.get("on_timeout", "fail")
            )
        except (KeyError, ConfigurationError):
            return None


PlanWait = Sleep | WaitFor
KINDS: dict[str, type[Sleep] | type[WaitFor]] = {"Sleep": Sleep, "WaitFor": WaitFor}


@dataclass(frozen=True)
class ForEach:
    """Run ``step`` once per element of the list ``data[key]``, at most ``concurrency`` at a
    time (in list order with 1); what each returns is stored at its position in
    ``data[into]``. The sequence goes on once every element succeeded.

    ``step`` is a ``Step`` subclass (``self.item`` and ``self.index`` inside it) or a plain
    function ``fn(item, data)``.
    """

    key: str
    step: Any
    _: KW_ONLY
    concurrency: int = 1
    into: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigurationError(f"ForEach({self.key!r}, ...): give the data key of a list.")
        if not callable(self.step) or not hasattr(self.step, "__name__"):
            raise ConfigurationError(
                f"ForEach({self.key!r}, {self.step!r}): give a Step subclass or a function "
                "fn(item, data)."
            )
        concurrency = self.concurrency
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ConfigurationError(
                f"ForEach({self.key!r}, concurrency={concurrency!r}): give a whole number >= 1."
            )
        if self.into is not None and (not isinstance(self.into, str) or not self.into):
            raise ConfigurationError(
                f"ForEach({self.key!r}, into={self.into!r}): give a data key, or None."
            )

    def params(self) -> dict[str, Any]:
        return {
            "key": self.key, "step": self.step.__name__, "concurrency": self.concurrency,
            "into": self.into,
        }  # fmt: skip


@dataclass(frozen=True)
class Use:
    """One use of a step or sub-sequence in a plan, with static values for its data.

    Made by ``Step.using(**values)`` or ``Sequence.using(**values)``. The values are part
    of the stored plan: a sequence in flight keeps them across deploys.
    """

    target: type | Callable[..., Any]  # a Step or Sequence subclass, or a function
    values: Mapping[str, Any]

    def __post_init__(self) -> None:
        try:
            check_data(
                dict(self.values), what=f"{getattr(self.target, '__name__', self.target)}.using()"
            )
        except InvalidData as exc:
            raise ConfigurationError(str(exc)) from None
