"""The subcommands of ``manage.py sequence`` that show and steer sequences: list, show,
start, send, pause, resume, cancel, retry and prune.

``args`` holds their arguments, ``show`` what they print, ``steer`` what they change.
Each prints for people, or JSON with ``--json``; each failure is a CommandError (exit
status 1), each bad argument a usage error (exit status 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.management.base import CommandError

from sequence.management.cli.args import add_parsers
from sequence.management.cli.show import Output, handle_list, handle_show
from sequence.management.cli.steer import (
    PAST,
    Request,
    handle_action,
    handle_prune,
    handle_send,
    handle_start,
)

if TYPE_CHECKING:
    from django.core.management.base import BaseCommand

__all__ = ["SUBCOMMANDS", "add_parsers", "run"]


def run(command: BaseCommand, subcommand: str, options: dict[str, Any]) -> None:
    """Run one steering subcommand with its parsed ``options``."""
    out = Output(command, bool(options.pop("json", False)))
    if subcommand in PAST:
        handle_action(out, Request.of(subcommand, options))
    elif subcommand == "list":
        handle_list(out, **options)
    elif subcommand == "show":
        handle_show(out, **options)
    elif subcommand == "start":
        handle_start(out, **options)
    elif subcommand == "send":
        handle_send(out, **options)
    elif subcommand == "prune":
        handle_prune(out, **options)
    else:
        raise CommandError(f"Unknown subcommand {subcommand!r}.")


SUBCOMMANDS = ("list", "show", "start", "send", "pause", "resume", "cancel", "retry", "prune")
