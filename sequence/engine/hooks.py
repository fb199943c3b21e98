"""Calling user code that must not break the runner: signal receivers and hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("sequence")


def send(signal: Signal, sender: type, **kwargs: Any) -> None:
    """Send ``signal`` to every receiver; log the ones that raise."""
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "Receiver %r of a sequence signal raised %r",
                receiver,
                result,
                exc_info=(type(result), result, result.__traceback__),
            )


def call(hook: Callable[..., Any], *args: Any) -> None:
    """Run a user hook such as on_complete; log what it raises."""
    try:
        hook(*args)
    except Exception:
        logger.exception("Hook %s raised", getattr(hook, "__qualname__", hook))
