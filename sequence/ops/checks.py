"""System checks with stable ids; each hint names the fix.

``sequence.E001`` to ``E003`` and ``W002`` check the installation; ``E004`` every
``SEQUENCE_*`` setting's type and range, and ``W003`` a ``SEQUENCE_*`` name that is no
setting; ``E101`` to ``E103`` the settings the reliability guarantees depend on; they run with every command. The Redis check
(``sequence.W101``) talks to Redis, so it runs with ``manage.py check --deploy``, and
``sequence worker`` logs its findings when it starts.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any

from django.apps import apps
from django.conf import settings as django_settings
from django.core.checks import WARNING, CheckMessage, Error, Info, Tags, Warning
from django.core.checks import register as add_check

from sequence.declare.conf import Defaults, names, settings
from sequence.declare.exceptions import ConfigurationError
from sequence.declare.registry import registered
from sequence.declare.retry import Retry
from sequence.engine.rq.dispatch import get_queue, server_of

logger = logging.getLogger("sequence")


def register() -> None:
    add_check(check_django_rq)
    add_check(check_queues)
    add_check(check_serializer)
    add_check(check_database, Tags.database)
    add_check(check_settings)
    add_check(check_lease)
    add_check(check_liveness)
    add_check(check_inline)
    add_check(check_redis_policy, deploy=True)


def _queue_names() -> set[str]:
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
            # sequence enqueues JSON whatever this says, but django-rq reads the queue with
            # it (its dashboard, its requeue), and RQ's default is pickle.
            errors.append(
                Warning(
                    f"RQ_QUEUES[{name!r}] names no SERIALIZER; sequence jobs on it are JSON, "
                    "and django-rq reads the queue with RQ's default, pickle.",
                    hint=f'Add "SERIALIZER": "rq.serializers.JSONSerializer" to '
                    f"RQ_QUEUES[{name!r}], and run workers with `python manage.py sequence "
                    "worker` (django-rq's rqworker reads pickle unless given "
                    "--serializer rq.serializers.JSONSerializer).",
                    id="sequence.W002",
                )
            )
            continue
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
                    "rq.serializers.JSONSerializer --job-class sequence.jobs.SequenceJob).",
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


# RQ's forking worker kills a work-horse this many seconds after its job timeout.
HARD_KILL_MARGIN = 60


# Settings that are numbers, 0 or more (0 often turns a thing off): counts and RQ's job
# timeout are whole numbers; other durations may have a fraction (the worker's intervals).
_NUMBERS = {name for name, kind in Defaults.__annotations__.items() if kind in ("int", "float")}
_BYTES = {"MAX_DATA_BYTES", "HISTORY_CHANGE_LIMIT"}
_WHOLE = {"INLINE_STEPS", "MAX_ITEMS", "MAX_RECOVERIES", "SWEEP_BATCH", "TIMEOUT", *_BYTES}
_COUNTS = _WHOLE - {"TIMEOUT"} - _BYTES


def _setting_problem(name: str, value: Any) -> str | None:
    """Why ``SEQUENCE_<name> = value`` cannot work, or None."""
    kind = Defaults.__annotations__[name]
    if name in _NUMBERS:
        whole = name in _WHOLE
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            unit = "items" if name in _COUNTS else "bytes" if name in _BYTES else "seconds"
            return f"it must be {'a whole number' if whole else 'a number'} of {unit}"
        return "it cannot be negative" if value < 0 else None
    if kind == "str":
        return None if isinstance(value, str) else "it must be a string"
    if kind == "bool":
        return None if isinstance(value, bool) else "it must be True or False"
    if name == "ALLOWED_JOBS":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return None
        return "it must be a list of dotted paths (strings)"
    if name == "TEST_POINTS":
        return None if value is None or isinstance(value, dict) else "it must be a dict or None"
    if name == "RETRY":
        try:
            Retry.coerce(value)
        except (ConfigurationError, TypeError, ValueError) as exc:
            return f"it is not a Retry, a dict of Retry's arguments or a number ({str(exc).rstrip('.')})"
    return None


def check_settings(**kwargs: Any) -> list[CheckMessage]:
    """Every ``SEQUENCE_*`` setting of the right type and range, and no unknown one."""
    known = names()
    problems: list[CheckMessage] = []
    for name in known:
        if not hasattr(django_settings, f"SEQUENCE_{name}"):
            continue
        value = getattr(django_settings, f"SEQUENCE_{name}")
        problem = _setting_problem(name, value)
        if problem is not None:
            problems.append(
                Error(
                    f"SEQUENCE_{name} = {value!r:.80}: {problem}.",
                    hint=f"Fix it, or remove it for the default, {getattr(Defaults, name)!r}.",
                    id="sequence.E004",
                )
            )
    for setting in dir(django_settings):
        name = setting.removeprefix("SEQUENCE_")
        if setting.startswith("SEQUENCE_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(
                Warning(
                    f"{setting} is not a setting of sequence; it has no effect.",
                    hint=f"Did you mean SEQUENCE_{close[0]}?" if close else "Remove it.",
                    id="sequence.W003",
                )
            )
    return problems


def check_lease(**kwargs: Any) -> list[CheckMessage]:
    """A lease must outlast the step's timeout plus RQ's hard-kill margin."""
    margin = settings.LEASE_MARGIN
    if isinstance(margin, int | float) and margin > HARD_KILL_MARGIN:
        return []
    return [
        Error(
            f"SEQUENCE_LEASE_MARGIN is {margin!r}: a claim's lease (the step's timeout plus "
            f"this margin) could end while RQ still lets the step run (it hard-kills a "
            f"work-horse {HARD_KILL_MARGIN}s after the timeout), and the sweep would start "
            "the step a second time beside it.",
            hint=f"Set SEQUENCE_LEASE_MARGIN to more than {HARD_KILL_MARGIN} (default 90).",
            id="sequence.E101",
        )
    ]


def check_liveness(**kwargs: Any) -> list[CheckMessage]:
    """A worker must be able to miss a beat without being taken for dead."""
    beat, dead = settings.WORKER_HEARTBEAT, settings.WORKER_DEAD_AFTER
    if not beat or (isinstance(dead, int | float) and dead >= 2 * beat):
        return []
    return [
        Error(
            f"SEQUENCE_WORKER_DEAD_AFTER ({dead!r}s) is less than twice "
            f"SEQUENCE_WORKER_HEARTBEAT ({beat!r}s): a live worker that misses one beat would "
            "lose its step to the sweep.",
            hint="Make SEQUENCE_WORKER_DEAD_AFTER at least three times SEQUENCE_WORKER_HEARTBEAT.",
            id="sequence.E102",
        )
    ]


# Inline steps extend a job this long at most beyond its last step; RQ's heartbeat of a
# job run in the worker process covers its first 90 s (timeout capped at 30, plus 60).
MAX_INLINE_SECONDS = 30


def check_inline(**kwargs: Any) -> list[CheckMessage]:
    """Inline steps need a count and a short time budget."""
    steps, seconds = settings.INLINE_STEPS, settings.INLINE_SECONDS
    if (
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0
        and isinstance(seconds, int | float) and 0 <= seconds <= MAX_INLINE_SECONDS
    ):  # fmt: skip
        return []
    return [
        Error(
            f"SEQUENCE_INLINE_STEPS ({steps!r}) must be a whole number of steps, 0 or more, "
            f"and SEQUENCE_INLINE_SECONDS ({seconds!r}) a number of seconds from 0 to "
            f"{MAX_INLINE_SECONDS}: a job that runs steps inline for longer outlives what "
            "RQ expects of it.",
            hint="Keep SEQUENCE_INLINE_SECONDS short (default 1); raise INLINE_STEPS instead.",
            id="sequence.E103",
        )
    ]


def _connections(queue_names: list[str] | None) -> dict[tuple[Any, ...], Any]:
    from redis import ConnectionPool, Redis

    found: dict[tuple[Any, ...], Any] = {}
    for name in sorted(set(queue_names or []) | _queue_names()):
        try:
            queue = get_queue(name)
        except Exception:
            continue  # a queue missing from RQ_QUEUES is sequence.E002's business
        pool = queue.connection.connection_pool
        kwargs = dict(pool.connection_kwargs)
        where = server_of(queue)
        if where not in found:
            # A client of its own with short timeouts: a check must not hang on Redis.
            kwargs.update(socket_connect_timeout=2, socket_timeout=2, retry=None)
            client = Redis(
                connection_pool=ConnectionPool(connection_class=pool.connection_class, **kwargs)
            )
            found[where] = (name, client)
    return found


def check_redis_policy(queue_names: list[str] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """Redis must not evict keys: an evicted job is only found again by the sweep."""
    messages: list[CheckMessage] = []
    for name, client in _connections(queue_names).values():
        try:
            policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        except Exception as exc:
            messages.append(
                Info(
                    f"Could not read maxmemory-policy of the Redis behind queue {name!r}: {exc}.",
                    hint="Make sure it is noeviction (managed Redis: in its parameter group).",
                    id="sequence.I101",
                )
            )
            continue
        finally:
            client.connection_pool.disconnect()  # the pool is this check's own
        if policy not in (None, "noeviction"):
            messages.append(
                Warning(
                    f"The Redis behind queue {name!r} has maxmemory-policy {policy!r}: under "
                    "memory pressure it deletes queued step jobs, and those sequences stall "
                    "until a recovery sweep finds them.",
                    hint="Set maxmemory-policy noeviction (redis.conf, or CONFIG SET).",
                    id="sequence.W101",
                )
            )
    return messages


def log_deployment_warnings(queue_names: list[str]) -> None:
    """Log what the deploy checks find, for a worker starting up."""
    try:
        messages = check_redis_policy(queue_names) + check_lease() + check_liveness()
    except Exception:
        logger.exception("Could not check the Redis configuration.")
        return
    for message in messages:
        level = logging.WARNING if message.level >= WARNING else logging.INFO
        logger.log(level, "%s: %s %s", message.id, message.msg, message.hint or "")
