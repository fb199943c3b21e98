"""``Step``: the unit of work a user writes, the steps made of plain functions, and
``Use``, one use of a step in a plan with static values (``Step.using(...)``)."""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, cast

from sequence.declare.exceptions import ConfigurationError, InvalidData
from sequence.declare.retry import Retry
from sequence.declare.validation import check_data

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from sequence.declare.definitions import SequenceDefinition

logger = logging.getLogger("sequence")


# The type of a sequence's data: ``Step[OrderData]``, ``Sequence[OrderData]`` (a
# TypedDict, say); a plain ``Step`` is ``Step[dict[str, Any]]``. The default is for type
# checkers (PEP 696; typing_extensions until Python 3.13): at run time a plain TypeVar
# does, so the package needs no extra dependency.
if TYPE_CHECKING:
    D = TypeVar("D", default=dict[str, Any])
else:
    D = typing.TypeVar("D")


class Step(Generic[D]):
    """One step of a sequence. Subclass it and define ``perform()``.

    ``class Charge(Step[OrderData])`` types ``self.data`` as ``OrderData``.
    """

    retry: ClassVar[Retry | None] = None
    timeout: ClassVar[int | None] = None
    queue: ClassVar[str | None] = None
    atomic: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_options(cls)

    def __init__(
        self,
        *,
        data: dict[str, Any],
        sequence: SequenceDefinition,
        attempt: int,
        idempotency_key: str,
        heartbeat: Callable[[], None] | None = None,
        item: Any = None,
        index: int | None = None,
    ) -> None:
        self.data: D = cast("D", data)
        # In a ForEach: this element of the list, and its position (else None).
        self.item = item
        self.index = index
        self.sequence = sequence
        self.attempt = attempt
        self.idempotency_key = idempotency_key
        self.logger = logging.LoggerAdapter(
            logger, {"sequence_id": sequence.id, "step": type(self).__name__}
        )
        self._heartbeat = heartbeat

    def perform(self) -> Mapping[str, Any] | None:
        """Do the work; change ``self.data`` or return a dict to merge into it."""
        raise NotImplementedError(f"{type(self).__name__} must define perform().")

    def heartbeat(self) -> None:
        """Extend this step's lease; raises StepFenced if the step no longer holds it."""
        if self._heartbeat is not None:
            self._heartbeat()

    @classmethod
    def using(cls, **values: Any) -> Use:
        """One use of this step in a plan, with ``values`` merged into the data before it runs."""
        return Use(cls, values)


def _check_options(cls: type[Step[Any]]) -> None:
    """Refuse a step's options when its class is defined, not when its job is queued."""
    name = cls.__qualname__
    if cls.retry is not None:
        if isinstance(cls.retry, bool) or not isinstance(cls.retry, Retry | int | Mapping):
            raise ConfigurationError(
                f"{name}.retry = {cls.retry!r}: give a Retry(...), or None for SEQUENCE_RETRY."
            )
        try:
            Retry.coerce(cls.retry)
        except (ConfigurationError, TypeError) as exc:
            raise ConfigurationError(f"{name}.retry = {cls.retry!r}: {exc}") from exc
    timeout = cls.timeout
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0
    ):
        raise ConfigurationError(
            f"{name}.timeout = {timeout!r}: give whole seconds > 0 (the RQ job timeout), "
            "or None for SEQUENCE_TIMEOUT."
        )
    if cls.queue is not None and (not isinstance(cls.queue, str) or not cls.queue):
        raise ConfigurationError(
            f"{name}.queue = {cls.queue!r}: give the name of a queue in RQ_QUEUES, or None."
        )
    if not isinstance(cls.atomic, bool):
        raise ConfigurationError(f"{name}.atomic = {cls.atomic!r}: give True or False.")


class FunctionStep(Step):
    """A plain function ``fn(data)`` used as a step."""

    function: ClassVar[Callable[[dict[str, Any]], Mapping[str, Any] | None]]

    def perform(self) -> Mapping[str, Any] | None:
        return type(self).function(self.data)


class ItemFunctionStep(Step):
    """A plain function ``fn(item, data)`` run by a ForEach for each element."""

    function: ClassVar[Callable[[Any, dict[str, Any]], Any]]

    def perform(self) -> Any:
        return type(self).function(self.item, self.data)


@dataclass(frozen=True)
class Use:
    """One use of a step or sub-sequence in a plan, with static values for its data.

    Made by ``Step.using(**values)`` or ``Sequence.using(**values)``. The values are part
    of the stored plan: a sequence in flight keeps them across deploys.
    """

    target: type[Step] | type[SequenceDefinition] | Callable[..., Any]
    values: Mapping[str, Any]

    def __post_init__(self) -> None:
        try:
            check_data(
                dict(self.values), what=f"{getattr(self.target, '__name__', self.target)}.using()"
            )
        except InvalidData as exc:
            raise ConfigurationError(str(exc)) from None
