"""The registry: every declared sequence by its stable name.

A job never imports a dotted path taken from Redis or the database: it finds the
sequence here by the name stored on its record.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sequence.declare.definitions import SequenceDefinition, StepSpec
from sequence.declare.exceptions import ConfigurationError, UnknownSequence
from sequence.models import SequenceRecord

_registry: dict[str, type[SequenceDefinition[Any]]] = {}

D = TypeVar("D", bound=SequenceDefinition[Any])


def register(cls: type[SequenceDefinition[Any]]) -> None:
    """Register ``cls`` under its name; two classes with one name are a ConfigurationError."""
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


def get_sequence_class(name: str) -> type[SequenceDefinition[Any]]:
    """The registered sequence called ``name``."""
    try:
        return _registry[name]
    except KeyError:
        raise UnknownSequence(
            f"No sequence is registered as {name!r}; known: {sorted(_registry)!r}. "
            "Is its app installed, and is it defined in the app's sequences.py?"
        ) from None


def registered() -> dict[str, type[SequenceDefinition[Any]]]:
    """Every registered sequence by name."""
    return dict(_registry)


def load(record: SequenceRecord, expected: type[D]) -> D:
    """The instance of the record's registered class showing ``record``.

    UnknownSequence if that class is not ``expected`` or one of its subclasses.
    """
    declared = getattr(expected, "step_specs", None) and expected.name == record.name
    cls = expected if declared else get_sequence_class(record.name)
    if not issubclass(cls, expected):
        raise UnknownSequence(
            f"Sequence {record.pk} is a {record.name!r}, not a {expected.__qualname__!r}."
        )
    return cls._bind(record)


def find_step(sequence_name: str, step_name: str | None) -> StepSpec | None:
    """The current definition of a sequence's step, if both still exist."""
    if step_name is None:
        return None
    cls = _registry.get(sequence_name)
    return None if cls is None else cls.step_named(step_name)


def spec_for(record: SequenceRecord, index: int | None = None) -> StepSpec | None:
    """The current definition of step ``index`` (default: the current one) of a record's plan."""
    index = record.step_index if index is None else index
    plan = record.plan
    return find_step(record.name, plan[index] if index < len(plan) else None)
