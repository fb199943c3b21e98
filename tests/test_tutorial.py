"""The tutorial's project runs as written, on the package as users install it.

The wheel is built from this checkout and installed, with its dependencies from the
package index, into a fresh virtualenv; the project in examples/tutorial (the code
docs/tutorial.md shows) is migrated there, its own tests (`manage.py test contact`, with
drain() and no Redis) pass, a `sequence worker` is started, the contact form is
submitted through Django's test client, and the sequence is followed to the end and
found in the admin.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# What `pip wheel` needs to build the package, and nothing else of the checkout: the
# copy keeps build/ and egg-info/ of two passes running at once apart.
BUILD_FILES = ("pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md", "LICENSE")

# Run in the tutorial's project with its own settings: submit the form, follow the
# sequence until it completes, then look at the thanks page and the admin's list.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time

    import django

    django.setup()

    from django.test import Client
    from django.test.utils import setup_test_environment

    import sequence
    from contact.sequences import ContactFormSequence

    setup_test_environment()  # lets the test client's host in
    client = Client()
    assert client.get("/").status_code == 200
    response = client.post(
        "/", {"name": "Ada", "email": "ada@example.com", "body": "Where is my invoice?"}
    )
    assert response.status_code == 302, response.content.decode()
    seq_id = int(response.url.rstrip("/").rsplit("/", 1)[1])

    seq = ContactFormSequence.get(seq_id)
    seen = [seq.status]
    deadline = time.monotonic() + float(sys.argv[1])
    while seq.status not in ("completed", "failed", "canceled"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
        seq.refresh()
        if seq.status != seen[-1]:
            seen.append(seq.status)

    client.login(username="admin", password="tutorial-password")
    admin = client.get("/admin/sequence/sequencerecord/")
    print(json.dumps({
        "package": sequence.__file__,
        "statuses": seen,
        "status": seq.status,
        "status_repr": repr(ContactFormSequence.get(seq_id).status),
        "error": seq.error,
        "progress": [repr(seq.progress), str(seq.progress)],
        "data": seq.data,
        "thanks": client.get(response.url).content.decode(),
        "admin_status": admin.status_code,
        "admin": admin.content.decode(),
    }))
    """
)


def run(cmd: list[str | Path], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run a command to completion; fail the test with its output if it fails."""
    try:
        done = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{cmd} did not finish in {timeout}s:\n{exc.stdout}\n{exc.stderr}")
    if done.returncode != 0:
        pytest.fail(f"{cmd} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def clean_env(redis_url: str) -> dict[str, str]:
    """This process's environment without the test project's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SEQUENCE_")
        and key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV")
    }
    env.update(
        REDIS_URL=redis_url,
        PYTHONUNBUFFERED="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        DJANGO_SUPERUSER_USERNAME="admin",
        DJANGO_SUPERUSER_EMAIL="admin@example.com",
        DJANGO_SUPERUSER_PASSWORD="tutorial-password",
    )
    return env


def test_tutorial_project_runs_a_sequence_from_the_installed_wheel(tmp_path: Path) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the tutorial's project uses SQLite whatever the suite's database")
    started = time.monotonic()
    env = clean_env(settings.RQ_QUEUES["default"]["URL"])

    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "sequence", source / "sequence", ignore=shutil.ignore_patterns("__pycache__")
    )
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source],
        tmp_path,
        env,
        120,
    )
    (wheel,) = dist.glob("django_rq_sequence-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, env, 60)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", wheel], tmp_path, env, 180)

    project = tmp_path / "tutorial"
    shutil.copytree(
        ROOT / "examples" / "tutorial",
        project,
        ignore=shutil.ignore_patterns("__pycache__", "db.sqlite3*"),
    )
    run([python, "manage.py", "migrate", "--verbosity", "0"], project, env, 60)
    run([python, "manage.py", "check", "--fail-level", "WARNING"], project, env, 60)
    run([python, "manage.py", "createsuperuser", "--noinput"], project, env, 60)

    # The tutorial's first test (contact/tests.py): drain() under SEQUENCE_TESTING, with
    # no Redis to be had (nothing listens on port 1), as Django's test runner runs it.
    tested = subprocess.run(
        [str(python), "manage.py", "test", "contact", "--noinput"], cwd=project,
        env=env | {"REDIS_URL": "redis://127.0.0.1:1/0"}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "Ran 2 tests" in tested.stderr

    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [python, "manage.py", "sequence", "worker"], cwd=project, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        (project / "submit.py").write_text(SCRIPT)
        result = json.loads(
            run(
                [python, "submit.py", "60"],
                project,
                env | {"DJANGO_SETTINGS_MODULE": "mysite.settings"},
                90,
            )
        )
    finally:
        # The worker's session: the worker and RQ's scheduler process beside it.
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
    output = log.read_text(errors="replace")

    assert result["package"].startswith(str(venv)), result["package"]
    assert result["status"] == "completed", (result["statuses"], result["error"], output)
    assert result["status_repr"] == "'completed'"  # as the tutorial's shell session shows
    assert result["progress"] == ["Progress(done=3, total=3)", "3/3"]
    assert result["data"]["assignee"] == "billing@example.com"
    assert result["data"]["message"].startswith("Ada <ada@example.com> wrote:")
    assert "Message #" in result["thanks"]
    assert "is completed: 3/3 steps done." in result["thanks"]
    assert result["admin_status"] == 200
    assert "contact.ContactFormSequence" in result["admin"]
    assert "Subject: Contact form: Ada" in output
    assert "To: billing@example.com" in output
    assert time.monotonic() - started < 150
