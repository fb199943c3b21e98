"""Django settings for (g) django-absurd's workers: the app, its backend, one queue.

A project of its own (no ``sequence``, no bench app), on the PostgreSQL database
DATABASE_URL names, as django-absurd requires (psycopg 3). Its loggers at WARNING: at
INFO it writes a line per step, which would be timed with the steps.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from bench.absurd_chain import QUEUE

_url = urlsplit(os.environ["DATABASE_URL"])
SECRET_KEY = "bench-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django_absurd"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.path.lstrip("/"),
        "USER": _url.username or "postgres",
        "PASSWORD": _url.password or "",
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": _url.port or 5432,
        "CONN_MAX_AGE": None,
    }
}
TASKS = {"default": {"BACKEND": "django_absurd.backends.AbsurdBackend", "QUEUES": [QUEUE]}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_absurd": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django.tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
