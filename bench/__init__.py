"""The benchmark: ``sequence`` next to hand-written RQ chains. Run ``python -m bench``."""

from __future__ import annotations
