"""The declarations: ``Step``, ``Schedule``, and what a ``Sequence`` declares.

Nothing here runs or changes a sequence: the verbs of a handle (start, pause, retry...)
are in ``sequence.handle``, the registry of sequences by name in ``sequence.registry``.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, cast

from django.apps import apps

from sequence.cron import check_cron
from sequence.exceptions import ConfigurationError, InvalidData
from sequence.retry import Retry

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


@dataclass(frozen=True)
class Schedule:
    """Start a sequence on a cron schedule, in ``settings.TIME_ZONE``."""

    name: str
    cron: str
    data: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None

    def __post_init__(self) -> None:
        check_cron(self.name, self.cron)

    def make_data(self) -> dict[str, Any]:
        data = self.data() if callable(self.data) else self.data
        return dict(data or {})


class Step(Generic[D]):
    """One step of a sequence. Subclass it and define ``perform()``.

    ``class Charge(Step[OrderData])`` types ``self.data`` as ``OrderData``.
    """

    retry: ClassVar[Retry | None] = None
    timeout: ClassVar[int | None] = None
    queue: ClassVar[str | None] = None
    atomic: ClassVar[bool] = False

    def __init__(
        self,
        *,
        data: dict[str, Any],
        sequence: SequenceDefinition,
        attempt: int,
        idempotency_key: str,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.data: D = cast("D", data)
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


class FunctionStep(Step):
    """A plain function ``fn(data)`` used as a step."""

    function: ClassVar[Callable[[dict[str, Any]], Mapping[str, Any] | None]]

    def perform(self) -> Mapping[str, Any] | None:
        return type(self).function(self.data)


@dataclass(frozen=True)
class StepSpec:
    """A step as placed in a plan: its stable name and the class that runs it."""

    name: str
    cls: type[Step]

    @property
    def compensates(self) -> bool:
        return callable(getattr(self.cls, "compensate", None))


def _step_spec(item: object, prefix: str) -> StepSpec:
    if isinstance(item, type) and issubclass(item, Step):
        return StepSpec(prefix + item.__name__, item)
    if callable(item) and hasattr(item, "__name__"):
        cls = type(item.__name__, (FunctionStep,), {"function": staticmethod(item)})
        cls.__module__ = getattr(item, "__module__", __name__)
        return StepSpec(prefix + item.__name__, cls)
    raise ConfigurationError(
        f"Step {item!r} must be a Step subclass, a function taking the data, "
        "or a Sequence subclass."
    )


def _flatten(items: Iterable[object], prefix: str = "") -> list[StepSpec]:
    specs: list[StepSpec] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, SequenceDefinition):
            specs.extend(_flatten(item.steps, f"{prefix}{item.__name__}."))
        else:
            specs.append(_step_spec(item, prefix))
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
    """What a sequence declares (its steps, queue, version, schema, schedules and hooks),
    and the state an instance shows once loaded from its record.

    Subclass ``sequence.Sequence``, which adds the verbs, rather than this.
    """

    steps: ClassVar[list[Any]] = []
    queue: ClassVar[str | None] = None
    version: str = ""
    schema: ClassVar[Any] = None
    schedules: ClassVar[list[Schedule]] = []
    name: str

    # Filled per subclass by __init_subclass__.
    step_specs: ClassVar[list[StepSpec]]
    _by_name: ClassVar[dict[str, StepSpec]]

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
        cls._by_name = {}
        for spec in cls.step_specs:
            other = cls._by_name.setdefault(spec.name, spec)
            if other.cls is not spec.cls:
                raise ConfigurationError(
                    f"{cls.__qualname__} has two different steps named {spec.name!r}; "
                    "rename one of them."
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
    def step_named(cls, name: str) -> StepSpec | None:
        return cls._by_name.get(name)

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
            spec = cls._by_name.get(plan[index])
            if spec is not None and spec.compensates:
                return index
        return None

    @classmethod
    def clean(cls, data: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate starting data with ``schema``; return the data to store."""
        if data is None:
            data = {}
        if cls.schema is None:
            return data if isinstance(data, dict) else _not_a_dict(data)
        if not isinstance(data, Mapping):
            _not_a_dict(data)
        validate = getattr(cls.schema, "model_validate", None)
        try:
            if validate is not None:
                cleaned = validate(dict(data)).model_dump(mode="json")
            else:
                cleaned = cls.schema(dict(data))
        except InvalidData:
            raise
        except Exception as exc:
            raise InvalidData(f"{cls.name}: the schema rejected the data: {exc}") from exc
        return dict(cleaned) if isinstance(cleaned, Mapping) else _not_a_dict(cleaned)

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


def _not_a_dict(value: object) -> dict[str, Any]:
    raise InvalidData(
        f"data must be a dict (a JSON object), not {type(value).__name__} {value!r:.80}."
    )
