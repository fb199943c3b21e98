"""Reading the step timestamps the workers write (see ``bench.app.timing``)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


class HasLog(Protocol):
    def log_tail(self) -> str: ...


class Timings:
    """Reads the step timestamps the workers append to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_bytes(b"")
        self.offset = 0
        self.lines: dict[str, list[tuple[str, int, float, float, int]]] = {}

    def _read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for raw in chunk[:end].decode().splitlines():
            run, chain, index, started, ended, pid = raw.split()
            self.lines.setdefault(run, []).append(
                (chain, int(index), float(started), float(ended), int(pid))
            )

    def wait(
        self, run: str, count: int, timeout: float, pools: list[HasLog] | None = None
    ) -> list[tuple[str, int, float, float, int]]:
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            got = self.lines.get(run, [])
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                logs = "\n".join(p.log_tail() for p in pools or [])
                raise TimeoutError(
                    f"run {run}: {len(got)} of {count} steps after {timeout}s\n{logs}"
                )
            time.sleep(0.02)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def check_complete(lines: list[Any], chains: int, steps: int) -> None:
    seen = {(line[0], line[1]) for line in lines}
    if len(seen) != chains * steps or len(lines) != chains * steps:
        raise RuntimeError(
            f"expected {chains}x{steps} distinct steps, saw {len(seen)}/{len(lines)}"
        )


class Phases:
    """The wall-clock time of each phase of the bench's own run, printed as each ends.

    Not a measurement of anything compared: it shows where a run of the bench spends
    its time, so that the bench itself can be kept short.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.done: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.done.append((name, took))
            print(f"{self.prefix}({name}: {took:.1f}s)", flush=True)
