"""Print the versions this Python runs the suite with, on one line.

    python scripts/versions.py [--postgres]
    python scripts/versions.py --same-as OTHER_PYTHON   exit 0 if OTHER's environment has
                                                        every distribution of this one, at
                                                        the same version

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


def distributions() -> dict[str, str]:
    """Every installed distribution of this Python, by normalized name, with its version."""
    from importlib.metadata import distributions as all_of

    return {d.metadata["Name"].lower().replace("_", "-"): d.version for d in all_of()}


def same_as(other_python: str) -> bool:
    """Whether every distribution installed here is installed at the same version in the
    environment of ``other_python`` (which may hold more: linters, the docs' tools)."""
    import json
    import subprocess

    code = "import json, scripts.versions as v; print(json.dumps(v.distributions()))"
    found = subprocess.run([other_python, "-c", code], capture_output=True, text=True, check=True)
    theirs = json.loads(found.stdout)
    return all(theirs.get(name) == version for name, version in distributions().items())


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--same-as"]:
        sys.exit(0 if same_as(args[1]) else 1)
    print(line(postgres="--postgres" in args))
