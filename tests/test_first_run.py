"""Run before `migrate`: the worker, the command and the admin say so in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT

MIGRATE = "The sequence tables do not exist yet: run `python manage.py migrate`."

# Django's own tables are there, the sequence app's are not (added to a project later).
ADMIN_SCRIPT = textwrap.dedent(
    """
    import django

    django.setup()

    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    client = Client()
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    response = client.get("/admin/sequence/sequencerecord/")
    print(response.status_code, response.content.decode())
    """
)


def manage(database: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEQUENCE_DB_NAME": str(database), "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)  # SQLite, whatever the suite's database
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [["sequence", "worker", "--burst"], ["sequence", "list"], ["sequence", "recover"]],
    ids=["worker", "list", "recover"],
)
def test_a_command_run_before_migrate_says_to_migrate_in_one_line(tmp_path, command):
    done = manage(tmp_path / "new.sqlite3", "manage.py", *command)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"CommandError: {MIGRATE}"], done.stderr


def test_the_admin_list_before_migrate_says_to_migrate(tmp_path):
    database = tmp_path / "half.sqlite3"
    assert manage(database, "manage.py", "migrate", "--verbosity", "0").returncode == 0
    unapplied = manage(database, "manage.py", "migrate", "sequence", "zero", "--verbosity", "0")
    assert unapplied.returncode == 0, unapplied.stderr
    (tmp_path / "admin_list.py").write_text(ADMIN_SCRIPT)
    done = manage(database, str(tmp_path / "admin_list.py"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"503 {MIGRATE}"
