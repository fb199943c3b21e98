"""The declarations: ``Step``, and what a ``Sequence`` declares (its plan, its hooks).

Nothing here runs or changes a sequence: the verbs of a handle (start, pause, retry...)
are in ``sequence.engine.handle``, the registry of sequences by name in ``sequence.declare.registry``.
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, cast

from django.apps import apps

from sequence.declare.exceptions import ConfigurationError
from sequence.declare.flow import Concurrency
from sequence.declare.items import KINDS, ForEach, PlanWait, Sleep, Use, WaitFor
from sequence.declare.retry import Retry
from sequence.declare.schedule import Schedule
from sequence.declare.validation import check_step_options, clean_data

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    from sequence.models import Progress, SequenceRecord

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
        check_step_options(cls)

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
class StepSpec:
    """A step as placed in a plan: its stable name, the class that runs it, and the values
    its use merges into the data before it runs.

    The name is the step's (with its sub-sequences' names before it), followed by its
    values as JSON when it has some: ``Assign {"team": "support"}``.
    """

    name: str
    cls: type[Step]
    values: Mapping[str, Any] = field(default_factory=dict)
    # A Sleep or WaitFor: the item waits instead of running code.
    wait: PlanWait | None = None
    # A ForEach: ``cls`` runs once per element of a list.
    each: ForEach | None = None

    @property
    def base(self) -> str:
        """The name without the values."""
        return self.name.partition(" ")[0]

    @property
    def compensates(self) -> bool:
        return callable(getattr(self.cls, "compensate", None))

    def with_values(self, values: Mapping[str, Any]) -> StepSpec:
        """The same step used with ``values``."""
        return StepSpec(_named(self.base, values), self.cls, dict(values))


def _named(base: str, values: Mapping[str, Any]) -> str:
    return f"{base} {json.dumps(values, sort_keys=True)}" if values else base


def _element_spec(step: Any, prefix: str) -> StepSpec:
    """The step a ForEach runs per element: a Step subclass, or a function fn(item, data)."""
    if isinstance(step, type) and issubclass(step, Step):
        return StepSpec(prefix + step.__name__, step)
    if isinstance(step, type):
        raise ConfigurationError(
            f"ForEach(..., {step.__name__}): a ForEach runs a Step subclass or a function "
            f"fn(item, data) per element; {step.__name__} is neither (a sequence cannot be "
            "an element: start one per element with start_many instead)."
        )
    cls = type(step.__name__, (ItemFunctionStep,), {"function": staticmethod(step)})
    cls.__module__ = getattr(step, "__module__", __name__)
    return StepSpec(prefix + step.__name__, cls)


def _each_spec(base: str, item: ForEach, inner: StepSpec) -> StepSpec:
    return StepSpec(_named(base, item.params()), inner.cls, {}, None, item)


def _step_spec(item: object, prefix: str, values: Mapping[str, Any]) -> StepSpec:
    if isinstance(item, Sleep | WaitFor):
        return _wait_spec(prefix + type(item).__name__, item)
    if isinstance(item, ForEach):
        return _each_spec(prefix + "ForEach", item, _element_spec(item.step, prefix))
    if isinstance(item, type) and issubclass(item, Step):
        return StepSpec(_named(prefix + item.__name__, values), item, dict(values))
    if callable(item) and hasattr(item, "__name__"):
        cls = type(item.__name__, (FunctionStep,), {"function": staticmethod(item)})
        cls.__module__ = getattr(item, "__module__", __name__)
        return StepSpec(_named(prefix + item.__name__, values), cls, dict(values))
    raise ConfigurationError(
        f"Step {item!r} must be a Step subclass, a function taking the data, "
        "or a Sequence subclass."
    )


def _wait_spec(base: str, item: PlanWait) -> StepSpec:
    return StepSpec(_named(base, item.params()), Step, {}, item)


def _flatten(
    items: Iterable[object], prefix: str = "", values: Mapping[str, Any] | None = None
) -> list[StepSpec]:
    specs: list[StepSpec] = []
    for item in items:
        used = dict(values or {})
        if isinstance(item, Use):
            used.update(item.values)
            item = item.target
        if isinstance(item, type) and issubclass(item, SequenceDefinition):
            specs.extend(_flatten(item.steps, f"{prefix}{item.__name__}.", used))
        else:
            specs.append(_step_spec(item, prefix, used))
    return specs


def _default_name(cls: type) -> str:
    module = cls.__module__
    label = None
    if apps.apps_ready:
        config = apps.get_containing_app_config(module)
        label = config.label if config else None
    if label is None:
        parts = module.split(".")
        label = parts[-2] if len(parts) > 1 else parts[0]
    return f"{label}.{cls.__name__}"


class SequenceDefinition(Generic[D]):
    """What a sequence declares (its steps, queue, version, schema, schedules, concurrency
    and hooks),
    and the state an instance shows once loaded from its record.

    Subclass ``sequence.Sequence``, which adds the verbs, rather than this.
    """

    steps: ClassVar[list[Any]] = []
    queue: ClassVar[str | None] = None
    version: str = ""
    schema: ClassVar[Any] = None
    schedules: ClassVar[list[Schedule]] = []
    concurrency: ClassVar[Concurrency | None] = None
    name: str

    # Filled per subclass by __init_subclass__.
    step_specs: ClassVar[list[StepSpec]]
    _by_name: ClassVar[dict[str, StepSpec]]
    _by_base: ClassVar[dict[str, StepSpec]]

    # Handle state.
    id: int
    status: str
    data: D
    error: str
    plan: list[str]
    step_index: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _default_name(cls)
        cls.step_specs = _flatten(cls.steps)
        cls._by_name, cls._by_base = {}, {}
        for spec in cls.step_specs:
            cls._by_name.setdefault(spec.name, spec)
            if spec.each is not None:
                # The element's step, found by name when a stored plan names it.
                prefix = spec.base[: -len("ForEach")]
                inner = _element_spec(spec.each.step, prefix)
                cls._by_base.setdefault(inner.base, inner)
            other = cls._by_base.setdefault(spec.base, spec)
            if other.cls is not spec.cls:
                raise ConfigurationError(
                    f"{cls.__qualname__} has two different steps named {spec.name!r}; "
                    "rename one of them."
                )
        if cls.schema is not None and not callable(cls.schema):
            raise ConfigurationError(
                f"{cls.__qualname__}.schema = {cls.schema!r}: give a pydantic model class, or "
                "a callable that takes the data and returns it cleaned (or raises)."
            )
        if cls.concurrency is not None and not isinstance(cls.concurrency, Concurrency):
            raise ConfigurationError(
                f"{cls.__qualname__}.concurrency = {cls.concurrency!r:.80}: give "
                "Concurrency('data_key', limit=1), or leave it out."
            )
        names = [s.name for s in cls.schedules]
        if len(names) != len(set(names)):
            raise ConfigurationError(
                f"{cls.__qualname__} has two schedules with one name: {names!r}."
            )

    @classmethod
    def plan_names(cls) -> list[str]:
        return [spec.name for spec in cls.step_specs]

    @classmethod
    def using(cls, **values: Any) -> Use:
        """One use of this sequence as a sub-sequence, ``values`` merged into the data
        before each of its steps runs."""
        return Use(cls, values)

    @classmethod
    def step_named(cls, name: str) -> StepSpec | None:
        """The step a stored plan names, as this class defines it now.

        A use with values keeps the values the plan stored, whatever the class says now.
        """
        spec = cls._by_name.get(name)
        if spec is not None or " " not in name:
            return spec
        base, _, raw = name.partition(" ")
        spec = cls._by_base.get(base)
        try:
            values = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(values, dict):
            return None
        kind = base.rsplit(".", 1)[-1]
        if (spec is None and kind in KINDS) or (spec is not None and spec.wait is not None):
            # The plan stored the item's parameters: keep them, whatever the class says now
            # (a Sleep or WaitFor needs no code: one a deploy removed still ends as stored).
            item = KINDS[kind].from_params(values)
            return None if item is None else _wait_spec(base, item)
        if spec is None:
            return None
        if spec.each is not None:
            inner = cls._by_base.get(base[: -len("ForEach")] + str(values.get("step")))
            if inner is None:
                return None
            try:
                each = ForEach(
                    str(values["key"]),
                    inner.cls,
                    concurrency=int(values["concurrency"]),
                    into=values.get("into"),
                )
            except (KeyError, TypeError, ValueError, ConfigurationError):
                return None
            return _each_spec(base, each, inner)
        return spec.with_values(values)

    @classmethod
    def index_of(cls, name: str) -> int | None:
        """The index of the first plan item called ``name`` (in full, or its step's name)."""
        names = cls.plan_names()
        for candidates in (names, [n.split(" ", 1)[0].rsplit(".", 1)[-1] for n in names]):
            if name in candidates:
                return candidates.index(name)
        return None

    @classmethod
    def last_undo(cls, plan: list[str], before: int) -> int | None:
        """The index of the last step before ``before`` in ``plan`` that has an undo."""
        for index in reversed(range(min(before, len(plan)))):
            spec = cls.step_named(plan[index])
            if spec is not None and spec.compensates:
                return index
        return None

    @classmethod
    def clean(cls, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate starting data with ``schema``; return the data to store."""
        return clean_data(cls.name, cls.schema, data)

    # -- hooks --------------------------------------------------------------------

    def on_complete(self) -> None:
        """Called once, in the worker, after the last step committed."""

    def on_failure(self, error: str) -> None:
        """Called once, in the worker, after the sequence failed and compensations ran."""

    # -- the state a loaded instance shows ---------------------------------------------

    @classmethod
    def _bind(cls, record: SequenceRecord) -> Self:
        """An instance of this class showing ``record`` (the caller found the class)."""
        handle = cls.__new__(cls)
        handle._load(record)
        return handle

    def _load(self, record: SequenceRecord) -> None:
        self._record = record
        self.id = record.pk
        self.status = record.status
        self.data = cast("D", record.data)
        self.error = record.error
        self.plan = record.plan
        self.step_index = record.step_index
        self.version = record.version

    @property
    def record(self) -> SequenceRecord:
        return self._record

    @property
    def current_step(self) -> str | None:
        """The name of the step running or next to run; None once completed."""
        return self._record.current_step

    @property
    def progress(self) -> Progress:
        """How many of how many steps are done."""
        return self._record.progress

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.status}>"
