"""``Sequence``: the class users subclass, and the handle on one stored sequence.

A subclass declares its steps (see ``sequence.definitions``) and is registered by name;
an instance is a handle: load, refresh, wait, pause, resume, cancel, retry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Self

from sequence import registry, steering
from sequence.definitions import SequenceDefinition
from sequence.exceptions import SequenceCanceled, SequenceFailed, SequenceTimeout
from sequence.models import SequenceRecord
from sequence.starting import start
from sequence.states import Status


class Sequence(SequenceDefinition):
    """An ordered chain of steps. Subclass it, list ``steps``, and instantiate it to start.

    An instance is a handle on one stored sequence.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.step_specs:
            registry.register(cls)

    def __init__(self, **data: Any) -> None:
        """Start a sequence with ``data`` as keyword arguments."""
        self._load(start(type(self), data))

    @classmethod
    def start(
        cls,
        data: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
        queue: str | None = None,
    ) -> Self:
        """Save a sequence with ``data`` and queue its first step once the transaction commits."""
        return cls._bind(start(cls, data, key=key, queue=queue))

    @classmethod
    def get(cls, id: int | str) -> Self:
        """Load the sequence with this id; ``Sequence.get`` finds its class."""
        return registry.load(SequenceRecord.objects.find(id), cls)

    def refresh(self) -> None:
        """Reload the state from the database."""
        self._record.refresh_from_db()
        self._load(self._record)

    def wait(self, timeout: float = 30) -> dict[str, Any]:
        """Block until the sequence finishes; return its data or raise why it did not."""
        deadline = time.monotonic() + timeout
        pause = 0.01
        while True:
            self.refresh()
            if self.status == Status.COMPLETED:
                return self.data
            if self.status == Status.FAILED:
                raise SequenceFailed(f"{self.name} #{self.id} failed: {self.error}")
            if self.status == Status.CANCELED:
                raise SequenceCanceled(f"{self.name} #{self.id} was canceled.")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SequenceTimeout(
                    f"{self.name} #{self.id} is still {self.status} at step "
                    f"{self.current_step!r} after {timeout}s; wait longer or check its workers."
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.25)

    def pause(self) -> None:
        """Let the step in flight finish; start no further step until resume()."""
        self._load(steering.pause(self.id))

    def resume(self) -> None:
        """Continue a paused sequence from its next step."""
        self._load(steering.resume(self.id))

    def cancel(self) -> None:
        """Start no further step; the sequence ends ``canceled``."""
        self._load(steering.cancel(self.id))

    def retry(self, data: Mapping[str, Any] | None = None) -> None:
        """Run the failed step again, after merging ``data`` into the data."""
        self._load(steering.retry(self.id, data))
