"""System checks with stable ids; each hint names the fix."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Tags, Warning
from django.core.checks import register as add_check

from sequence.conf import settings


def register() -> None:
    add_check(check_django_rq)
    add_check(check_queues)
    add_check(check_serializer)
    add_check(check_database, Tags.database)

    from sequence import checks_reliability

    checks_reliability.register()


def _queue_names() -> set[str]:
    from sequence.definitions import registered

    names = {settings.QUEUE}
    for cls in registered().values():
        if cls.queue:
            names.add(cls.queue)
        names.update(spec.cls.queue for spec in cls.step_specs if spec.cls.queue)
    return names


def check_django_rq(**kwargs: Any) -> list[CheckMessage]:
    if apps.is_installed("django_rq"):
        return []
    return [
        Error(
            "sequence needs django_rq in INSTALLED_APPS.",
            hint='Add "django_rq" to INSTALLED_APPS, before "sequence".',
            id="sequence.E001",
        )
    ]


def check_queues(**kwargs: Any) -> list[CheckMessage]:
    configured = getattr(django_settings, "RQ_QUEUES", {})
    return [
        Error(
            f"Queue {name!r} is used by sequences but missing from RQ_QUEUES.",
            hint=f'Add "{name}": {{"URL": "redis://localhost:6379/0"}} to RQ_QUEUES, '
            "or point the sequence at a configured queue.",
            id="sequence.E002",
        )
        for name in sorted(_queue_names() - set(configured))
    ]


JSON_SERIALIZERS = {"rq.serializers.JSONSerializer", "json"}


def check_serializer(**kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    configured = getattr(django_settings, "RQ_QUEUES", {})
    for name in sorted(_queue_names() & set(configured)):
        serializer = configured[name].get("SERIALIZER")
        if serializer is None:
            continue  # sequence always enqueues with JSON; only an explicit other one clashes
        path = (
            serializer
            if isinstance(serializer, str)
            else f"{serializer.__module__}.{serializer.__qualname__}"
        )
        if path not in JSON_SERIALIZERS:
            errors.append(
                Error(
                    f"RQ_QUEUES[{name!r}] uses the serializer {path!r}; sequence jobs are JSON.",
                    hint='Set "SERIALIZER": "rq.serializers.JSONSerializer", and run workers '
                    "with `manage.py sequence worker` (or rqworker --serializer "
                    "rq.serializers.JSONSerializer --job-class sequence.dispatch.SequenceJob).",
                    id="sequence.E003",
                )
            )
    return errors


def check_database(databases: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from django.db import connection

    if connection.vendor in ("postgresql", "sqlite"):
        return []
    return [
        Warning(
            f"sequence is tested on PostgreSQL and SQLite, not {connection.vendor}.",
            hint="Its claim uses UPDATE ... RETURNING; use PostgreSQL or SQLite.",
            id="sequence.W001",
        )
    ]
