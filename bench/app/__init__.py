"""A bench-only Django app: the hand-written chain's table, the step jobs, the sequences."""

from __future__ import annotations
