"""``manage.py sequence <subcommand>``: run workers, recover, and inspect or steer sequences."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from sequence.declare.conf import settings
from sequence.engine.recovery import sweep
from sequence.engine.schedules import describe, run_due
from sequence.management import cli
from sequence.models import NOT_MIGRATED, not_migrated
from sequence.ops.worker import run_worker


class Command(BaseCommand):
    help = (
        "Run sequence workers, recover stuck sequences, and list, show, start, pause, "
        "resume, cancel, retry or prune sequences. `manage.py sequence SUBCOMMAND --help` "
        "explains each."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Subparsers are CommandParsers too: a bad argument raises CommandError when the
        # command is called from code, and exits 2 with the usage when run from a shell.
        sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        worker = sub.add_parser("worker", help="Run a worker that only runs sequence steps.")
        worker.add_argument(
            "queues", nargs="*", help="Queues to work on (default: SEQUENCE_QUEUE)."
        )
        worker.add_argument("--burst", action="store_true", help="Stop when the queues are empty.")
        worker.add_argument(
            "--worker-class", choices=["simple", "fork"], default="simple",
            help="simple (default) runs steps in the worker process; fork forks one per step.",
        )  # fmt: skip
        worker.add_argument("--name", help="Worker name.")

        recover = sub.add_parser("recover", help="Queue again the sequences that are stuck.")
        recover.add_argument(
            "--loop", type=float, metavar="SECONDS",
            help="Sweep every SECONDS instead of once.",
        )  # fmt: skip
        recover.add_argument(
            "--grace", type=float, default=None,
            help="Seconds a dispatch may stay unconfirmed (default: SEQUENCE_DISPATCH_GRACE).",
        )  # fmt: skip
        recover.add_argument(
            "--json", action="store_true", dest="as_json", help="Print JSON for programs."
        )

        schedule = sub.add_parser("schedule", help="Start the sequences whose cron tick is due.")
        schedule.add_argument(
            "--loop", type=float, metavar="SECONDS", help="Look every SECONDS instead of once."
        )
        listing = sub.add_parser(
            "schedules", help="List every schedule with its last and next tick."
        )
        listing.add_argument(
            "--json", action="store_true", dest="as_json", help="Print JSON for programs."
        )

        health = sub.add_parser(
            "health", help="Report workers, backlog and stuck sequences; exit 1 when unhealthy."
        )
        health.add_argument(
            "--json", action="store_true", dest="as_json", help="Print JSON for programs."
        )

        cli.add_parsers(sub)

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        for name in (
            "verbosity",
            "settings",
            "pythonpath",
            "traceback",
            "no_color",
            "force_color",
            "skip_checks",
        ):
            options.pop(name, None)
        try:
            if subcommand in cli.SUBCOMMANDS:
                cli.run(self, subcommand, options)
                return
            handler = getattr(self, f"handle_{subcommand}", None)
            if handler is None:
                raise CommandError(f"Unknown subcommand {subcommand!r}.")
            handler(**options)
        except DatabaseError as exc:
            if not_migrated(exc):
                raise CommandError(NOT_MIGRATED) from None
            raise
        except BrokenPipeError:
            # The reader went away (`sequence show 7 | head`): stop quietly. Output still
            # buffered would fail again at exit, so it goes nowhere instead.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)

    def handle_worker(
        self, queues: list[str], burst: bool, worker_class: str, name: str | None, **_: Any
    ) -> None:
        run_worker(queues or [settings.QUEUE], kind=worker_class, burst=burst, name=name)

    def handle_recover(
        self, loop: float | None, grace: float | None, as_json: bool = False, **_: Any
    ) -> None:
        import time

        from django.db import close_old_connections

        while True:
            close_old_connections()
            try:
                result = sweep(grace)
            except Exception as exc:
                if not loop:
                    raise
                # Looping, as a service: the database or Redis is away; try again.
                self.stderr.write(f"Recovery sweep failed: {exc!r}; trying again in {loop}s.")
            else:
                if as_json:
                    found = {
                        "redispatched": result.redispatched, "failed": result.failed,
                        "released": result.released, "confirmed": result.confirmed,
                    }  # fmt: skip
                    self.stdout.write(json.dumps(found))
                else:
                    self.stdout.write(f"Recovery sweep: {result}.")
            if not loop:
                return
            time.sleep(loop)

    def handle_health(self, as_json: bool = False, **_: Any) -> None:
        from sequence.ops.health import gather, report_lines

        health = gather()
        if as_json:
            self.stdout.write(json.dumps(health.as_dict(), indent=2))
        else:
            for line in report_lines(health):
                self.stdout.write(line)
        if not health.healthy:
            # After the report: exit status 1 from a shell, an exception from call_command.
            raise CommandError(f"Unhealthy: {len(health.problems)} problems (see the report).")

    def handle_schedule(self, loop: float | None, **_: Any) -> None:
        import time

        from django.db import close_old_connections

        while True:
            close_old_connections()
            for handle in run_due():
                self.stdout.write(f"Started {handle.name} #{handle.id}.")
            if not loop:
                return
            time.sleep(loop)

    def handle_schedules(self, as_json: bool = False, **_: Any) -> None:
        rows = describe()
        if as_json:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("No schedules.")
            return
        table = [["SEQUENCE", "SCHEDULE", "CRON", "TIME ZONE", "LAST TICK", "NEXT TICK"]]
        table += [
            [*(row[k] for k in ("sequence", "schedule", "cron", "time_zone")),
             row["last_tick"] or "never", row["next_tick"] or "unknown (see the log)"]
            for row in rows
        ]  # fmt: skip
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        for line in table:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            )
