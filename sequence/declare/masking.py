"""Hiding secrets: values under keys that look secret, in data, errors and logs.

A key looks secret when, lowercased and without ``_``, ``-``, ``.`` or spaces, it
contains one of :data:`SECRET_WORDS` (so ``password``, ``db_password``, ``API-Key``,
``accessToken`` and ``client_secret`` all do). Masking is for people reading the admin,
the command's output, stored errors and logs; the stored data keeps the real values,
since the steps need them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "********"

SECRET_WORDS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "accesskey",
    "sessionid",
    "cookie",
)

# Secret values shorter than this are not searched for in free text: "1" or "no"
# would mask half of every traceback.
MIN_LITERAL = 4

_SEPARATORS = re.compile(r"[\s_\-.]")
# The same words inside free text, where compound ones may keep a separator: "api key".
_WORDS = (
    r"pass(?:word|wd|phrase)|secret|token|api[\s_\-.]?key|authorization|credential"
    r"|private[\s_\-.]?key|access[\s_\-.]?key|session[\s_\-.]?id|cookie"
)
# key=value, key: value, "key": "value", 'key': 'value', key => value.
_PAIR = re.compile(
    r"(?P<key>[\"']?[\w\-.]*(?:" + _WORDS + r")[\w\-.]*[\"']?)(?P<sep>\s*(?:=>|[:=])\s*)"
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,;&)\]}]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<scheme>\bbearer\s+)(?P<value>[\w\-.~+/=]{8,})", re.IGNORECASE)
# scheme://user:password@host
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<value>[^@/\s]+)(?=@)", re.IGNORECASE
)


def is_secret_key(key: object) -> bool:
    """Whether a value stored under ``key`` should be hidden."""
    if not isinstance(key, str):
        return False
    normalised = _SEPARATORS.sub("", key).lower()
    return any(word in normalised for word in SECRET_WORDS)


def mask_data(value: Any) -> Any:
    """A copy of ``value`` with every value under a secret-looking key replaced by MASK."""
    if isinstance(value, Mapping):
        return {
            key: (MASK if is_secret_key(key) and item not in (None, "") else mask_data(item))
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_data(item) for item in value]
    return value


def mask_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """A history row's change in its full shape (``added``, ``changed``, ``removed``),
    with the values under secret-looking keys replaced by MASK."""
    changed = {
        key: [MASK, MASK] if is_secret_key(key) else mask_data(pair)
        for key, pair in changes.get("changed", {}).items()
    }
    shown: dict[str, Any] = {
        "added": mask_data(changes.get("added", {})),
        "changed": changed,
        "removed": list(changes.get("removed", [])),
    }
    if changes.get("too_large"):
        shown["too_large"] = True
    return shown


def unmask_data(edited: Any, original: Any) -> Any:
    """``edited`` with every MASK put back to the value it hides in ``original``.

    Lets a person edit masked data (the admin's "retry with edited data") without
    seeing, or overwriting, the secrets in it.
    """
    if isinstance(edited, dict):
        source = original if isinstance(original, Mapping) else {}
        restored = {}
        for key, item in edited.items():
            if item == MASK and key in source:
                restored[key] = source[key]
            else:
                restored[key] = unmask_data(item, source.get(key))
        return restored
    if isinstance(edited, list):
        source_list = original if isinstance(original, list) else []
        return [
            unmask_data(item, source_list[i] if i < len(source_list) else None)
            for i, item in enumerate(edited)
        ]
    return edited


def secret_values(data: Any) -> set[str]:
    """Every string (of at least MIN_LITERAL characters) stored under a secret-looking key."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, secret or is_secret_key(key))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, secret)
        elif secret and value is not None and not isinstance(value, bool):
            text = str(value)
            if len(text) >= MIN_LITERAL:
                found.add(text)

    walk(data, False)
    return found


def _mask_pair(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['key']}{match['sep']}{quote}{MASK}{quote}"


def mask_text(text: str, data: Any = None) -> str:
    """``text`` with secrets hidden: ``key=value`` pairs under secret-looking keys,
    bearer tokens, passwords in URLs, and any secret value found in ``data``."""
    if not text:
        return text
    for literal in sorted(secret_values(data) if data is not None else (), key=len, reverse=True):
        # Exceptions often show the repr of a value: quotes and backslashes escaped.
        backslashed = literal.replace("\\", "\\\\")
        for form in (
            literal,
            repr(literal)[1:-1],
            backslashed.replace("'", "\\'"),
            backslashed.replace('"', '\\"'),
        ):
            text = text.replace(form, MASK)
    text = _BEARER.sub(lambda m: m["scheme"] + MASK, text)
    text = _PAIR.sub(_mask_pair, text)
    return _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)


class MaskSecrets(logging.Filter):
    """A logging filter that masks secrets in a record's message and traceback.

    ``sequence`` installs it on the loggers in :data:`LOGGERS`; add it to your handlers
    to cover other loggers (a filter on a logger does not see its children's records).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        masked = mask_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


# Our own logger; RQ's, which logs the traceback of every failed job; Django's signal
# dispatcher, which logs what a receiver raised before ``sequence`` logs it again.
LOGGERS = ("sequence", "rq.worker", "django.dispatch")


def install(names: Iterable[str] = LOGGERS) -> None:
    """Add MaskSecrets to the named loggers, once each."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, MaskSecrets) for f in logger.filters):
            logger.addFilter(MaskSecrets())


# The runner, the admin and the command import this module: their logs are masked
# from the first record on, with no setting to forget.
install()
