"""Sequence and Step base classes, and the registry of sequences by name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from django.apps import apps

from sequence.exceptions import ConfigurationError, InvalidData, UnknownSequence

if TYPE_CHECKING:
    import rq

    from sequence.handle import Progress
    from sequence.models import SequenceRecord

logger = logging.getLogger("sequence")


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


@dataclass(frozen=True)
class Schedule:
    """Start a sequence on a cron schedule, in ``settings.TIME_ZONE``."""

    name: str
    cron: str
    data: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None

    def make_data(self) -> dict[str, Any]:
        data = self.data() if callable(self.data) else self.data
        return dict(data or {})


class Step:
    """One step of a sequence. Subclass it and define ``perform()``."""

    retry: ClassVar[Retry | None] = None
    timeout: ClassVar[int | None] = None
    queue: ClassVar[str | None] = None
    atomic: ClassVar[bool] = False

    def __init__(
        self,
        *,
        data: dict[str, Any],
        sequence: Sequence,
        attempt: int,
        idempotency_key: str,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.data = data
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
        if isinstance(item, type) and issubclass(item, Sequence):
            specs.extend(_flatten(item.steps, f"{prefix}{item.__name__}."))
        else:
            specs.append(_step_spec(item, prefix))
    return specs


_registry: dict[str, type[Sequence]] = {}


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


def register(cls: type[Sequence]) -> None:
    existing = _registry.get(cls.name)
    same_class = existing is not None and (
        (existing.__module__, existing.__qualname__) == (cls.__module__, cls.__qualname__)
    )
    if existing is not None and not same_class:
        raise ConfigurationError(
            f"Two sequences are named {cls.name!r}: {existing.__module__}.{existing.__qualname__}"
            f" and {cls.__module__}.{cls.__qualname__}. Give one of them name = '...'."
        )
    _registry[cls.name] = cls


def get_sequence_class(name: str) -> type[Sequence]:
    """The registered Sequence subclass called ``name``."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownSequence(
            f"No sequence is registered as {name!r}; known: {sorted(_registry)!r}. "
            "Is its app installed, and is it defined in the app's sequences.py?"
        ) from None


def find_step(sequence_name: str, step_name: str | None) -> StepSpec | None:
    """The current definition of a sequence's step, if both still exist."""
    if step_name is None:
        return None
    try:
        return get_sequence_class(sequence_name).step_named(step_name)
    except UnknownSequence:
        return None


def registered() -> dict[str, type[Sequence]]:
    """Every registered sequence by name."""
    return dict(_registry)


class Sequence:
    """An ordered chain of steps. Subclass it, list ``steps``, and instantiate it to start.

    An instance is a handle on one stored sequence.
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
    data: dict[str, Any]
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
        if cls.step_specs:
            register(cls)

    # -- starting ---------------------------------------------------------------

    def __init__(self, **data: Any) -> None:
        """Start a sequence with ``data`` as keyword arguments."""
        from sequence.starting import start

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
        from sequence.starting import start

        return cls._from_record(start(cls, data, key=key, queue=queue))

    @classmethod
    def plan_names(cls) -> list[str]:
        return [spec.name for spec in cls.step_specs]

    @classmethod
    def step_named(cls, name: str) -> StepSpec | None:
        return cls._by_name.get(name)

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

    # -- the handle ---------------------------------------------------------------

    @classmethod
    def _from_record(cls, record: SequenceRecord) -> Self:
        target = cls
        if cls is Sequence or cls.name != record.name:
            target = get_sequence_class(record.name)  # type: ignore[assignment]
            if not issubclass(target, cls):
                raise UnknownSequence(
                    f"Sequence {record.pk} is a {record.name!r}, not a {cls.name!r}."
                )
        handle = target.__new__(target)
        handle._load(record)
        return handle

    def _load(self, record: SequenceRecord) -> None:
        self._record = record
        self.id = record.pk
        self.status = record.status
        self.data = record.data
        self.error = record.error
        self.plan = record.plan
        self.step_index = record.step_index
        self.version = record.version

    @classmethod
    def get(cls, id: int | str) -> Self:
        """Load the sequence with this id; ``Sequence.get`` finds its class."""
        from sequence.models import SequenceRecord

        try:
            record = SequenceRecord.objects.get(pk=id)
        except (SequenceRecord.DoesNotExist, ValueError):
            raise UnknownSequence(f"No sequence has the id {id!r}.") from None
        return cls._from_record(record)

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
        from sequence.handle import Progress

        return Progress(self._record.steps_done, self._record.total_steps)

    def refresh(self) -> None:
        """Reload the state from the database."""
        self._record.refresh_from_db()
        self._load(self._record)

    def wait(self, timeout: float = 30) -> dict[str, Any]:
        """Block until the sequence finishes; return its data or raise why it did not."""
        from sequence.handle import wait

        return wait(self, timeout)

    def pause(self) -> None:
        """Let the step in flight finish; start no further step until resume()."""
        from sequence import transitions

        self._load(transitions.pause(self.id))

    def resume(self) -> None:
        """Continue a paused sequence from its next step."""
        from sequence import transitions

        self._load(transitions.resume(self.id))

    def cancel(self) -> None:
        """Start no further step; the sequence ends ``canceled``."""
        from sequence import transitions

        self._load(transitions.cancel(self.id))

    def retry(self, data: Mapping[str, Any] | None = None) -> None:
        """Run the failed step again, after merging ``data`` into the data."""
        from sequence import transitions

        self._load(transitions.retry(self.id, data))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} #{self.id} {self.status}>"


def _not_a_dict(value: object) -> dict[str, Any]:
    raise InvalidData(
        f"data must be a dict (a JSON object), not {type(value).__name__} {value!r:.80}."
    )
