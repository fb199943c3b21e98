"""Fault injection for this project's own test suite (not for users' tests: see
``sequence.testing``): arming test points, delivering a step job in-process, sweeping.

Test points are named places in the runner and the sweep (see ``POINTS``) where a test
can crash, stop or stall a worker, or inject an error. They do nothing unless a test
arms them: in its own process with :func:`arm` / :func:`armed`, or in worker processes
through the ``SEQUENCE_TEST_POINTS`` setting, which ``sequence worker`` reads at start::

    SEQUENCE_TEST_POINTS = {"after_commit": {"do": "crash", "step": 0, "once": "/tmp/x"}}

An action is ``crash`` (SIGKILL this process), ``stop`` (SIGSTOP it), ``raise`` (raise
:class:`SimulatedCrash`, which the runner does not catch: the process "dies" at that
point but the test goes on), ``error`` (raise ``django.db.OperationalError``, as a lost
connection would), ``sleep:SECONDS``, ``hold:PATH`` (create ``PATH.reached``, then wait
until ``PATH.release`` exists) or ``duplicate`` (at ``after_dispatch``: queue the job
twice more). Filters: ``sequence``, ``step`` and ``epoch`` match the job; ``once`` names
a file that the first process to fire creates, so the point fires once across processes;
``times`` with ``once`` allows that many firings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from django.db import OperationalError

from sequence import runner
from sequence.engine import claims, points, recovery
from sequence.engine.points import POINTS, Action, Context
from sequence.engine.rq.dispatch import STEP, enqueue_step


class SimulatedCrash(BaseException):
    """Raised by the ``raise`` action: the runner lets it through, as if the process died."""


def arm(point: str, action: str | Action, **filters: Any) -> Callable[[], None]:
    """Make ``point`` run ``action`` in this process; return a function that disarms it."""
    if point not in POINTS:
        raise ValueError(f"Unknown test point {point!r}; choose one of {POINTS!r}.")
    handler = _filtered(_action(action), filters)
    armed = points.armed
    armed[point] = handler

    def disarm() -> None:
        if armed.get(point) is handler:
            del armed[point]

    return disarm


@contextlib.contextmanager
def armed(point: str, action: str | Action, **filters: Any) -> Iterator[None]:
    """Arm ``point`` for the duration of the ``with`` block."""
    disarm = arm(point, action, **filters)
    try:
        yield
    finally:
        disarm()


def disarm_all() -> None:
    """Disarm every test point in this process."""
    points.armed.clear()


def install(spec: Mapping[str, Any] | None) -> None:
    """Arm the points described by ``spec`` (the ``SEQUENCE_TEST_POINTS`` setting)."""
    for point, options in (spec or {}).items():
        entries = options if isinstance(options, list) else [options]
        handlers = []
        for entry in entries:
            entry = {"do": entry} if isinstance(entry, str) else dict(entry)
            handlers.append(_filtered(_action(entry.pop("do")), entry))
        if point not in POINTS:
            raise ValueError(f"Unknown test point {point!r}; choose one of {POINTS!r}.")
        points.armed[point] = _chain(handlers)


def _chain(handlers: list[Action]) -> Action:
    def run(context: Context) -> None:
        for handler in handlers:
            handler(context)

    return run


def _filtered(action: Action, filters: Mapping[str, Any]) -> Action:
    filters = dict(filters)
    once = filters.pop("once", None)
    times = int(filters.pop("times", 1))
    unknown = set(filters) - {"sequence", "step", "epoch"}
    if unknown:
        raise ValueError(f"Unknown test point filters {sorted(unknown)!r}.")

    def run(context: Context) -> None:
        for key, wanted in filters.items():
            value = context.get(key)
            if isinstance(wanted, list | tuple | set) and value not in wanted:
                return
            if not isinstance(wanted, list | tuple | set) and value != wanted:
                return
        if once is not None and not _take_slot(str(once), times):
            return
        action(context)

    return run


def _take_slot(path: str, times: int) -> bool:
    """Create one of ``times`` marker files; False once all exist (across processes)."""
    for index in range(times):
        name = path if index == 0 else f"{path}.{index}"
        try:
            fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            continue
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}\n".encode())
        os.close(fd)
        return True
    return False


def _action(action: str | Action) -> Action:
    if callable(action):
        return action
    name, _, argument = action.partition(":")
    if name == "crash":
        return lambda context: os.kill(os.getpid(), signal.SIGKILL)
    if name == "stop":
        return lambda context: os.kill(os.getpid(), signal.SIGSTOP)
    if name == "raise":

        def crash(context: Context) -> None:
            raise SimulatedCrash(f"simulated crash at {dict(context)!r}")

        return crash
    if name == "error":

        def error(context: Context) -> None:
            raise OperationalError(f"simulated lost database connection at {dict(context)!r}")

        return error
    if name == "sleep":
        seconds = float(argument or 1)
        return lambda context: time.sleep(seconds)
    if name == "hold":
        if not argument:
            raise ValueError("hold needs a path: 'hold:/tmp/somewhere'.")
        return lambda context: hold(argument)
    if name == "duplicate":
        return _duplicate
    raise ValueError(
        f"Unknown test point action {action!r}; use crash, stop, raise, error, sleep:S, "
        "hold:PATH or duplicate."
    )


def hold(path: str, timeout: float = 60) -> None:
    """Announce arrival at ``PATH.reached`` and wait for ``PATH.release`` (at most ``timeout``)."""
    Path(f"{path}.reached").write_text(f"{os.getpid()}\n")
    release = Path(f"{path}.release")
    deadline = time.monotonic() + timeout
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def _duplicate(context: Context) -> None:
    for _ in range(2):
        enqueue_step(
            context["sequence"],
            context["step"],
            context["epoch"],
            context["queue"],
            context["spec"],
        )


def deliver(
    sequence_id: int,
    step_index: int,
    epoch: int,
    *,
    worker: str = "test",
    token: str | None = None,
    kind: str = STEP,
    item: int | None = None,
) -> None:
    """Run one step job (or compensation job) in this process, as worker ``worker`` would
    (no RQ involved)."""
    reset = claims.execution.set(claims.Execution(worker=worker, token=token))
    try:
        runner.run_step(sequence_id, step_index, epoch, kind, item)
    finally:
        claims.execution.reset(reset)


def sweep(grace: float = 0) -> Any:
    """Run one recovery sweep now, treating every unconfirmed dispatch as overdue."""
    return recovery.sweep(grace)
