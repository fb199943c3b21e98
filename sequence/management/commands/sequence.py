"""``manage.py sequence <subcommand>``: run workers, recover, and steer sequences."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sequence.conf import settings


class Command(BaseCommand):
    help = "Run sequence workers, recover stuck sequences, and inspect or steer sequences."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=argparse.ArgumentParser)

        worker = sub.add_parser("worker", help="Run a worker that only runs sequence steps.")
        worker.add_argument("queues", nargs="*", help="Queues to work on (default: SEQUENCE_QUEUE).")
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
            "--grace", type=int, default=None,
            help="Seconds a dispatch may stay unconfirmed (default: SEQUENCE_DISPATCH_GRACE).",
        )  # fmt: skip

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        handler = getattr(self, f"handle_{subcommand}", None)
        if handler is None:
            raise CommandError(f"Unknown subcommand {subcommand!r}.")
        handler(**options)

    def handle_worker(self, queues: list[str], burst: bool, worker_class: str, name: str | None, **_: Any) -> None:
        from sequence.worker import run_worker

        run_worker(queues or [settings.QUEUE], kind=worker_class, burst=burst, name=name)

    def handle_recover(self, loop: float | None, grace: int | None, **_: Any) -> None:
        import time

        from sequence.recovery import sweep

        while True:
            result = sweep(grace)
            self.stdout.write(f"Recovery sweep: {result}.")
            if not loop:
                return
            time.sleep(loop)
