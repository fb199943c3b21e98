"""A private Redis server per test run, started before Django reads its settings.

Loaded with ``-p tests.redis_server`` (see pyproject.toml), so each pytest process,
and the worker processes it starts, use their own server: concurrent runs cannot
flush each other's queues. Set TEST_REDIS_URL to use an existing server instead.
Finding and starting the server is ``scripts/redis_server.py``'s, shared with
``make test``, ``make demo`` and the benchmark.
"""

from __future__ import annotations

import gc
import os
import warnings

import pytest

from scripts.redis_server import RedisServerError, Server, binary, free_port, listening

# The fault tests start servers of their own with these.
__all__ = ["binary", "free_port", "listening", "start", "stop"]

_server: Server | None = None


def start() -> str:
    """Start a server on a free loopback port; return its URL (database 1)."""
    global _server
    try:
        _server = Server()
    except RedisServerError as exc:
        pytest.exit(f"{exc} Or run the suite with `make test`, or set TEST_REDIS_URL.", 2)
    return _server.url(1)


def stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    os.environ["REDIS_URL"] = os.environ.get("TEST_REDIS_URL") or start()


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Clients cached for the whole run (the queues' connections) are only finalized
    # now; their sockets closing at exit is not a leak of any test's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    stop()
