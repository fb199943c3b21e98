"""Build, test and run helpers; ``redis_server`` is also imported by the bench and the tests."""

from __future__ import annotations
