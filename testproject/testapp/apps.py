from __future__ import annotations

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "testproject.testapp"
    label = "testapp"

    def ready(self) -> None:
        # The fault tests' sequences live beside sequences.py (which every app has
        # imported at start-up), so that worker processes register them too.
        from testproject.testapp import faults  # noqa: F401
