"""Settings for the tutorial's project: SQLite, Redis from REDIS_URL, mail to the console."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# For the tutorial only: a real project reads its secret from the environment.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-tutorial-only")
DEBUG = True
ALLOWED_HOSTS = []

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_rq",
    "sequence",
    "contact",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "db.sqlite3",
        # The web server and the worker write to the database at the same time: WAL lets
        # them, and IMMEDIATE makes a writer wait for the lock instead of failing.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    },
}

# Redis for the job queue. Sequences' jobs are JSON, never pickle (check sequence.E003).
RQ_QUEUES = {
    "default": {
        "URL": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        "SERIALIZER": "rq.serializers.JSONSerializer",
    },
}

# The worker prints every mail it sends instead of sending it.
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "website@example.com"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
