"""The arguments of ``manage.py sequence``: each type, and every subcommand's parser.

Each error message says what was wrong and what to write; a bad argument is a usage
error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sequence.engine.states import Status
from sequence.ops.retention import parse_age

if TYPE_CHECKING:
    from datetime import timedelta


MAX_LIMIT = 10_000


# -- argument types: each error message says what was wrong and what to write -------


def sequence_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a sequence id; ids are whole numbers such as 42 "
            "(see `manage.py sequence list`)."
        )
    return value


def limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a limit; give a whole number from 1 to {MAX_LIMIT}."
        )
    return value


def batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch size; give a number from 1.")
    return value


def age(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subject(text: str) -> tuple[str, str, str]:
    """``app_label.Model:pk`` as (app label, model name, pk)."""
    model, sep, pk = text.partition(":")
    app_label, dot, name = model.rpartition(".")
    if not (sep and dot and app_label and name and pk):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subject; write app_label.Model:pk, such as shop.Order:42."
        )
    return app_label, name, pk


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given inline, or read from a file as ``@path``."""
    source = "the JSON"
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise argparse.ArgumentTypeError(
                f"cannot read {str(path)!r}: {exc.strerror}."
            ) from None
        source = f"the JSON in {str(path)!r}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{source} is not valid: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            """Write an object such as '{"name": "Ada"}' (quote it for the shell)."""
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"{source} is {type(value).__name__} {value!r:.60}; give an object such as "
            """'{"name": "Ada"}'."""
        )
    return value


# -- the parsers -----------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add the steering subcommands to the ``sequence`` command's subparsers."""

    def add(name: str, help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
        parser.add_argument("--json", action="store_true", help="Print JSON for programs.")
        return parser

    p = add("list", "List sequences, newest first.")
    p.add_argument(
        "--status",
        action="append",
        choices=Status.values,
        metavar="STATUS",
        help=f"Only this status (repeat for several): {', '.join(Status.values)}.",
    )
    p.add_argument("--name", help="Only sequences with this registered name, e.g. shop.Checkout.")
    p.add_argument(
        "--subject",
        type=subject,
        metavar="app_label.Model:pk",
        help="Only sequences started about this object, e.g. shop.Order:42.",
    )
    p.add_argument("--limit", type=limit, default=20, help="At most this many (default 20).")

    p = add("show", "Show one sequence: status, plan, data and attempts.")
    p.add_argument("id", type=sequence_id, help="The sequence id.")
    p.add_argument(
        "--tracebacks", action="store_true", help="Print each failed attempt's traceback."
    )
    p.add_argument(
        "--history", action="store_true", help="Print what each attempt changed in the data."
    )

    p = add("send", "Send an event to a sequence (a WaitFor of its plan takes it).")
    p.add_argument("id", type=sequence_id, help="The sequence id.")
    p.add_argument("event", help="The event's name, as its WaitFor names it.")
    p.add_argument(
        "--data", type=json_object, default=None,
        help="The event's data, merged into the sequence's: a JSON object or @file.json.",
    )  # fmt: skip
    p.add_argument(
        "--id", dest="event_id", metavar="EVENT_ID",
        help="The sender's id for the event: sending the same id again is ignored.",
    )  # fmt: skip

    p = add("start", "Start a sequence.")
    p.add_argument("sequence_name", metavar="NAME", help="Registered name, e.g. shop.Checkout.")
    p.add_argument(
        "--data",
        type=json_object,
        default={},
        help="""Starting data as a JSON object, e.g. '{"name": "Ada"}', or @file.json.""",
    )
    p.add_argument("--key", help="Start key: starting again with it returns the same sequence.")
    p.add_argument("--queue", help="RQ queue for this sequence (default: the sequence's).")

    for action, text in (
        ("pause", "Pause sequences: the step in flight finishes, no further step starts."),
        ("resume", "Resume paused sequences from their next step."),
        ("cancel", "Cancel sequences: no further step starts."),
        ("retry", "Run failed sequences' failed step again with fresh attempts."),
    ):
        p = add(action, text)
        p.add_argument("ids", nargs="*", type=sequence_id, metavar="ID", help="Sequence ids.")
        if action != "retry":
            p.add_argument(
                "--name",
                help="Instead of ids: every sequence with this registered name that the "
                "action applies to, in one statement (with --status, only those).",
            )
            p.add_argument(
                "--status",
                action="append",
                choices=Status.values,
                metavar="STATUS",
                help="With --name: only sequences in this status (repeat for several).",
            )
        if action == "cancel":
            p.add_argument(
                "--compensate",
                action="store_true",
                help="Undo the completed steps first (their compensate()), last first.",
            )
        if action == "retry":
            p.add_argument(
                "--data",
                type=json_object,
                default=None,
                help="Corrections merged into the data first, as a JSON object or @file.json.",
            )
            p.add_argument(
                "--from-step",
                metavar="NAME",
                help="Move onto the sequence's current plan and version, from this step.",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="Retry even though its compensations ran.",
            )

    p = add("prune", "Delete finished sequences and their history once they are old.")
    p.add_argument(
        "--older-than",
        type=age,
        required=True,
        metavar="AGE",
        help="Finished longer ago than this: 30d, 12h, 90m, 45s or 2w.",
    )
    p.add_argument(
        "--batch-size", type=batch_size, default=1000, help="Rows per transaction (1000)."
    )
    p.add_argument("--dry-run", action="store_true", help="Count, delete nothing.")


# -- output helpers ----------------------------------------------------------------------
