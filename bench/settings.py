"""Django settings for the benchmark: the test project's, plus the bench app and queues.

The database comes from DATABASE_URL / SEQUENCE_DB_NAME and Redis from REDIS_URL, as
in ``testproject.settings``.
"""

from __future__ import annotations

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import INSTALLED_APPS, LOGGING, REDIS_URL

# Workers and drivers skip admin autodiscovery (they never render a page); the admin
# benchmark (BENCH_ADMIN=1) loads every app's admin.py as a site would.
_ADMIN = (
    "django.contrib.admin"
    if os.environ.get("BENCH_ADMIN")
    else "django.contrib.admin.apps.SimpleAdminConfig"
)
INSTALLED_APPS = [
    _ADMIN if app == "django.contrib.admin" else app for app in [*INSTALLED_APPS, "bench.app"]
]

QUEUES = ("default", "high", "bench-a", "bench-b", "bench-c", "bench-e", "bench-q")
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "SERIALIZER": "rq.serializers.JSONSerializer"} for name in QUEUES
}

LOGGING = {
    **LOGGING,
    "loggers": {
        "sequence": {"handlers": ["console"], "level": "WARNING"},
        "rq.worker": {"handlers": ["console"], "level": "WARNING"},
        "rq.scheduler": {"handlers": ["console"], "level": "WARNING"},
    },
}
