"""Checks that data can be stored as JSON, naming the offending key."""

from __future__ import annotations

import json
import math
from typing import Any

from sequence.declare.conf import settings
from sequence.declare.exceptions import InvalidData


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
