"""``manage.py demo_admin``: the admin on the demo's database, as ``make admin`` runs it.

Makes sure a superuser ``admin`` exists (created if missing) with a fresh password,
prints it, picks a free local port, prints the URL and runs ``runserver`` there (with
the static files served, as DEBUG is off) until Ctrl-C.
"""

from __future__ import annotations

import secrets
import socket
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from sequence.models import SequenceRecord

USERNAME = "admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Command(BaseCommand):
    help = "Run the admin on the demo database with a superuser whose password is printed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=0, help="Port (default: a free one).")

    def handle(self, *args: Any, port: int, **options: Any) -> None:
        users = get_user_model()
        password = secrets.token_urlsafe(9)
        user = users.objects.filter(username=USERNAME).first()
        if user is None:
            users.objects.create_superuser(USERNAME, "admin@example.com", password)
            made = "created"
        else:
            # Its password was printed once and is not stored anywhere: give a new one.
            user.set_password(password)
            user.save(update_fields=["password"])
            made = "exists; new password"
        port = port or free_port()
        url = f"http://127.0.0.1:{port}/admin/sequence/sequencerecord/"
        count = SequenceRecord.objects.count()
        self.stdout.write(f"superuser {USERNAME!r} {made}: password {password}")
        self.stdout.write(f"admin: {url}  ({count} sequences; Ctrl-C stops the server)")
        call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, insecure_serving=True)
