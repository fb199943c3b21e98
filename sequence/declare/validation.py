"""Checks that data can be stored as JSON, naming the offending key."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sequence.declare.conf import settings
from sequence.declare.exceptions import ConfigurationError, InvalidData
from sequence.declare.retry import Retry


def _path(path: str, key: object) -> str:
    return f"{path}[{key!r}]"


# Deeper than this, JSON readers (Python's among them) give up; a value that contains
# itself is refused here too.
MAX_DEPTH = 200


def _check(value: Any, path: str, depth: int = 0) -> None:
    # Exact types: subclasses (OrderedDict aside) may not round-trip unchanged.
    if depth > MAX_DEPTH:
        raise InvalidData(
            f"{path[:120]}... nests more than {MAX_DEPTH} levels deep, or contains itself; "
            "flatten it."
        )
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidData(f"{path} is {value!r}; JSON cannot hold NaN or infinity.")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidData(f"{path} contains a NUL character; remove it or encode the value.")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidData(f"{path} has the key {key!r}; JSON object keys must be strings.")
            if "\x00" in key:
                raise InvalidData(f"{_path(path, key)}: the key contains a NUL character.")
            _check(item, _path(path, key), depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
        return
    hint = "a list" if isinstance(value, tuple | set | frozenset) else "a string or number"
    raise InvalidData(
        f"{path} is {type(value).__name__} {value!r:.80}, which JSON cannot hold; "
        f"store it as {hint}."
    )


def check_data(data: Any, *, what: str = "data") -> None:
    """Raise InvalidData unless ``data`` is a JSON object within the size limit."""
    if not isinstance(data, dict):
        raise InvalidData(
            f"{what} must be a dict (a JSON object), not {type(data).__name__} {data!r:.80}."
        )
    _check(data, what)
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    if size > settings.MAX_DATA_BYTES:
        largest = max(data, key=lambda k: len(json.dumps(data[k], ensure_ascii=False)))
        raise InvalidData(
            f"{what} is {size} bytes of JSON, over SEQUENCE_MAX_DATA_BYTES "
            f"({settings.MAX_DATA_BYTES}), the largest part being {_path(what, largest)}; "
            "store large values elsewhere and keep a reference."
        )


def check_step_options(cls: Any) -> None:
    """Refuse a ``Step`` subclass's options (``retry``, ``timeout``, ``queue``, ``atomic``)
    when its class is defined, not when its job is queued."""
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


def clean_data(name: str, schema: Any, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """A sequence's starting data, validated with its ``schema`` (a pydantic model or a
    callable returning the cleaned dict), as it is stored."""
    if data is None:
        data = {}
    if schema is None:
        return data if isinstance(data, dict) else _not_a_dict(data)
    if not isinstance(data, Mapping):
        _not_a_dict(data)
    validate = getattr(schema, "model_validate", None)
    try:
        if validate is not None:
            cleaned = validate(dict(data)).model_dump(mode="json")
        else:
            cleaned = schema(dict(data))
    except InvalidData:
        raise
    except Exception as exc:
        raise InvalidData(f"{name}: the schema rejected the data: {exc}") from exc
    if not isinstance(cleaned, Mapping):
        raise InvalidData(
            f"{name}: the schema returned {type(cleaned).__name__} {cleaned!r:.80}; "
            "it must return the cleaned data, a dict."
        )
    return dict(cleaned)


def _not_a_dict(value: object) -> dict[str, Any]:
    raise InvalidData(
        f"data must be a dict (a JSON object), not {type(value).__name__} {value!r:.80}."
    )
