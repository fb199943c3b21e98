"""The worker command stops cleanly when asked, and the forking worker forks safely."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import datetime

import pytest
from django.utils import timezone

from sequence.models import StepAttempt
from sequence.ops.maintenance import fork_guard
from sequence.ops.worker import build_worker
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


def test_the_forking_worker_does_not_fork_while_the_maintenance_thread_works():
    # The maintenance thread holds the guard for a second (as during a sweep); a horse
    # forked then could inherit a database driver's lock mid-use and hang.
    seq = ThreeSteps.start({})
    released: list[datetime] = []

    def maintenance_busy() -> None:
        with fork_guard:
            time.sleep(1)
            released.append(timezone.now())

    busy = threading.Thread(target=maintenance_busy)
    busy.start()
    time.sleep(0.1)  # the guard is held
    build_worker(["default"], kind="fork").work(burst=True)
    busy.join()
    seq.refresh()
    assert seq.status == "completed"
    first = StepAttempt.objects.filter(sequence_id=seq.id).order_by("id").first()
    assert first is not None
    assert first.started_at >= released[0]
