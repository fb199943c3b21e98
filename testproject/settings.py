"""Settings for the demo and the test suite.

DATABASE_URL selects PostgreSQL (postgres://user@host:port/name); without it a SQLite
file is used. SEQUENCE_DB_NAME overrides the database name (tests point worker
processes at the test database with it). REDIS_URL selects Redis.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("SEQUENCE_VAR_DIR", BASE_DIR / "var"))
VAR.mkdir(exist_ok=True)

SECRET_KEY = "demo-only-not-secret"
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "sequence",
    "testproject.demo",
    "testproject.testapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "/static/"


def _database() -> dict[str, object]:
    url = os.environ.get("DATABASE_URL")
    name = os.environ.get("SEQUENCE_DB_NAME")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"DATABASE_URL {url!r}: only postgres:// URLs are supported here.")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name or parts.path.lstrip("/") or "test",
            "USER": parts.username or "postgres",
            "PASSWORD": parts.password or "",
            "HOST": parts.hostname or "127.0.0.1",
            "PORT": parts.port or 5432,
            "CONN_MAX_AGE": None,
            "CONN_HEALTH_CHECKS": True,
            # One test database per test run: concurrent runs must not share it.
            "TEST": {"NAME": f"test_sequence_{os.getpid()}"},
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": name or VAR / "db.sqlite3",
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        "CONN_MAX_AGE": None,
        "TEST": {"NAME": str(VAR / f"test-{os.getpid()}.sqlite3")},
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "SERIALIZER": "rq.serializers.JSONSerializer"}
    for name in ("default", "high")
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "sequence": {"handlers": ["console"], "level": os.environ.get("SEQUENCE_LOG", "WARNING")},
        "rq.worker": {"handlers": ["console"], "level": os.environ.get("RQ_LOG", "WARNING")},
    },
}

if os.environ.get("TRACES_FILE"):  # tests/test_traces.py: this worker's spans, to that file
    from testproject.spans import install

    install(os.environ["TRACES_FILE"])

# Any SEQUENCE_* setting can come from the environment as JSON (tests and the benchmark
# configure worker processes this way).
for _key, _value in os.environ.items():
    if _key.startswith("SEQUENCE_") and _key not in (
        "SEQUENCE_DB_NAME",
        "SEQUENCE_VAR_DIR",
        "SEQUENCE_LOG",
    ):
        globals()[_key] = json.loads(_value)
