"""Plain RQ jobs that are not sequence steps, for tests of a queue shared with them."""

from __future__ import annotations

from typing import Any


def add(a: int, b: int) -> int:
    return a + b


def multiply(a: int, b: int) -> int:
    return a * b


def announce(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    connection.set(f"announced:{job.id}", str(result))
