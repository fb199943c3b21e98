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

# The worker stop time (bench.stopping) gives each worker a queue of its own, so each
# holds its queue's scheduler lock and a burst worker's queue empties when its own
# sequence ends: as many queues as workers it stops per configuration, at most.
STOP_QUEUES = tuple(f"bench-stop-{i}" for i in range(10))
QUEUES = ("default", "high", "bench-a", "bench-b", "bench-c", "bench-e", "bench-q", *STOP_QUEUES)
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
