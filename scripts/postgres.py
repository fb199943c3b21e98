"""Is the test PostgreSQL reachable? Start the local cluster first when running in CI.

    python scripts/postgres.py URL

Exit 0: it answers. Exit 1: it does not, and this is not CI (the caller skips the
PostgreSQL pass). Exit 2: it does not, in CI, even after trying to start the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def log(message: str) -> None:
    print(f"postgres: {message}", file=sys.stderr)


def reachable(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_cluster() -> None:
    """Start the Debian cluster(s) installed on this machine, as CI's machine has them."""
    etc = Path("/etc/postgresql")
    versions = sorted(p.name for p in etc.iterdir()) if etc.is_dir() else []
    if not versions:
        log("no cluster under /etc/postgresql to start")
        return
    for version in versions:
        log(f"starting PostgreSQL {version}/main")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False
        )


def main() -> int:
    url = sys.argv[1]
    if reachable(url):
        return 0
    if os.environ.get("CI") != "true":
        log(f"{url} is not reachable: skipping the PostgreSQL pass (CI=true makes this fail).")
        return 1
    start_cluster()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if reachable(url):
            return 0
        time.sleep(0.5)
    log(f"{url} is still not reachable after starting the cluster.")
    return 2


if __name__ == "__main__":
    sys.exit(main())
