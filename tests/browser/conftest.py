"""Fixtures for the browser tests: Debian's Chromium and the Playwright package.

Both are installed when missing, as CI and a fresh machine need: Chromium with
``apt-get`` (Playwright's own browser download is not used, so nothing is fetched from
outside the package registries), Playwright with pip into this interpreter's env.
Without apt (and outside CI) the tests are skipped with the reason; in CI they fail.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from django.db import connections

from tests.conftest import OUTPUT

CHROMIUM = Path("/usr/bin/chromium")
PLAYWRIGHT = "playwright>=1.50"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = OUTPUT / "browser"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests)")
    pytest.skip(reason)


def _install_chromium() -> None:
    apt = shutil.which("apt-get")
    if apt is None:
        _unavailable("Chromium is missing and apt-get is not available to install it")
    if os.geteuid() != 0:
        _unavailable("Chromium is missing and installing it with apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            _unavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium binary, installed with apt-get when missing."""
    if not CHROMIUM.exists():
        _install_chromium()
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is still missing after installing the chromium package")
    return CHROMIUM


@pytest.fixture(scope="session")
def sync_playwright() -> Any:
    """Playwright's sync API, pip-installed into this env when missing."""
    try:
        module = importlib.import_module("playwright.sync_api")
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", PLAYWRIGHT],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            _unavailable(f"pip install {PLAYWRIGHT} failed: {done.stderr.strip()[-500:]}")
        importlib.invalidate_caches()
        module = importlib.import_module("playwright.sync_api")
    return module.sync_playwright


@pytest.fixture
def page(chromium: Path, sync_playwright: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A page in headless Debian Chromium, 1600x1000, failing fast on a missing element."""
    # Playwright's sync API runs an event loop in this thread; the test still uses the
    # ORM between browser calls, which Django would otherwise refuse.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium), args=LAUNCH_ARGS, headless=True
        )
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(15_000)
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()
            # While Playwright's event loop runs, Django keeps this context's database
            # connections apart from the thread's: close them, or they outlive the test.
            connections.close_all()


def log_in(page: Any, live_server: Any, path: str) -> None:
    """Log in as the ``admin`` user (password ``password``), landing on ``path``."""
    page.goto(f"{live_server.url}/admin/login/?next={path}")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(rf"{re.escape(path)}$"))
