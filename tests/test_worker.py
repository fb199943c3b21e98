"""The worker command stops cleanly when asked."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from testproject.testapp.sequences import ThreeSteps

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_idle_worker_stops_on_sigterm(workers):
    proc = workers.start()[0]
    seq = ThreeSteps.start({})
    seq.wait(30)  # the worker is up and idle again
    os.kill(proc.pid, signal.SIGTERM)
    try:
        assert proc.wait(timeout=15) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the idle worker ignored SIGTERM")
