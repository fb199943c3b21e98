"""Importing this module leaves a mark: a worker must never import it from a job payload."""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ.get("TRIPWIRE", "tripwire")).write_text("imported")


def boom() -> None:
    Path(os.environ.get("TRIPWIRE", "tripwire")).write_text("ran")
