"""Flow control a sequence declares: ``Concurrency``, how many run at once per key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sequence.declare.exceptions import ConfigurationError, InvalidData

ON_BUSY = ("queue", "reject", "cancel_running")


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` sequences of the class with one value of ``key`` are active.

    ``key`` names a data key, or is a callable of the data returning the value. A start
    while that key is full waits ``queued`` for a place (``on_busy="queue"``), raises
    ``SequenceBusy`` (``"reject"``), or cancels the active ones (``"cancel_running"``).
    """

    key: str | Callable[[Mapping[str, Any]], Any]
    limit: int = 1
    on_busy: str = "queue"

    def __init__(
        self,
        key: str | Callable[[Mapping[str, Any]], Any],
        *,
        limit: int = 1,
        on_busy: str = "queue",
    ) -> None:
        if not (isinstance(key, str) and key) and not callable(key):
            raise ConfigurationError(
                f"Concurrency(key={key!r}): give the name of a data key (a string such as "
                "'account_id') or a callable that takes the data and returns the key."
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"Concurrency(limit={limit!r}): the limit is a whole number, 1 or more."
            )
        if on_busy not in ON_BUSY:
            raise ConfigurationError(
                f"Concurrency(on_busy={on_busy!r}): use one of {', '.join(map(repr, ON_BUSY))}."
            )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "on_busy", on_busy)

    def key_of(self, data: Mapping[str, Any]) -> str:
        """The key's value for ``data``, as stored on the record; InvalidData if it has none."""
        if callable(self.key):
            value = self.key(data)
            where = f"Concurrency key {getattr(self.key, '__name__', self.key)!r}"
        else:
            if self.key not in data:
                raise InvalidData(
                    f"The data has no key {self.key!r}, which this sequence's Concurrency "
                    f"counts by; give it in the starting data (keys given: {sorted(data)!r:.200})."
                )
            value, where = data[self.key], f"data[{self.key!r}]"
        if value is None or isinstance(value, dict | list):
            raise InvalidData(
                f"{where} is {value!r:.80}; a Concurrency key is a string or a number."
            )
        text = str(value)
        if len(text) > 255:
            raise InvalidData(f"{where} is {len(text)} characters long; the most is 255.")
        return text
