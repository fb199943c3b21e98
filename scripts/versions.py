"""Print the versions this Python runs the suite with, on one line.

    python scripts/versions.py [--postgres]

``Python 3.12.1, Django 6.1.3, rq 2.12.0, django-rq 4.2.0, redis-py 8.2.0, croniter 7.0.0``,
and psycopg's with --postgres. Read from the installed distributions' metadata, so
nothing is imported (no Django settings needed). ``scripts/pytest_pass.sh`` writes it to
``test-output/NAME/versions`` for ``scripts/summarize.py``; ``scripts/mkenv.sh`` prints it.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

# (distribution, the name shown): redis-py, so it is not read as the server's version.
SHOWN = [("Django", "Django"), ("rq", "rq"), ("django-rq", "django-rq"), ("redis", "redis-py")]
SHOWN += [("croniter", "croniter")]


def installed(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def line(postgres: bool = False) -> str:
    shown = [*SHOWN, ("psycopg", "psycopg")] if postgres else SHOWN
    parts = [f"Python {sys.version.split()[0]}"]
    parts += [f"{name} {installed(dist)}" for dist, name in shown]
    return ", ".join(parts)


if __name__ == "__main__":
    print(line(postgres="--postgres" in sys.argv[1:]))
