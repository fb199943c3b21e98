"""Cron schedules start one sequence per tick, in settings.TIME_ZONE."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from sequence import Schedule, Sequence, schedules
from sequence.models import SequenceRecord
from testproject.testapp.sequences import A

pytestmark = pytest.mark.django_db(transaction=True)

UTC = ZoneInfo("UTC")


# Declared here, not in the test app, so worker processes never run these schedules.
class Nightly(Sequence):
    name = "testapp.Nightly"
    steps = [A]
    schedules = [
        Schedule("at_nine", cron="0 9 * * *", data=lambda: {"source": "cron"}),
        Schedule("hourly", cron="0 * * * *", data={"source": "hourly"}),
    ]


class EveryMinute(Sequence):
    name = "tests.EveryMinute"
    steps = [A]
    schedules = [Schedule("minutely", cron="* * * * *")]


def nightly_keys() -> list[str]:
    return sorted(
        SequenceRecord.objects.filter(name="testapp.Nightly").values_list("key", flat=True)
    )


def test_a_due_tick_starts_its_sequence_with_the_schedules_data():
    started = schedules.run_due(datetime(2026, 11, 21, 9, 0, 30, tzinfo=UTC))
    assert sorted(s.data.get("source", "") for s in started) == ["", "cron", "hourly"]
    assert nightly_keys() == [
        "schedule:at_nine:2026-11-21T09:00+00:00",
        "schedule:hourly:2026-11-21T09:00+00:00",
    ]


def test_ticks_follow_the_time_zone_setting(settings):
    settings.TIME_ZONE = "Europe/Paris"
    # 08:01 UTC is 09:01 in Paris in November: the 9 o'clock tick is due.
    now = datetime(2026, 11, 21, 8, 1, tzinfo=UTC)
    assert names(schedules.due(now)) == ["at_nine", "hourly", "minutely"]
    settings.TIME_ZONE = "UTC"
    assert names(schedules.due(now)) == ["hourly", "minutely"]


def names(ticks):
    return sorted(t.schedule.name for t in ticks)


def test_a_tick_older_than_the_window_is_not_started():
    now = datetime(2026, 11, 21, 9, 30, 30, tzinfo=UTC)
    assert names(schedules.due(now, window=300)) == ["minutely"]


def test_many_schedulers_start_one_sequence_per_tick():
    now = datetime(2026, 11, 21, 9, 0, 5, tzinfo=UTC)
    barrier = threading.Barrier(4)

    def scheduler() -> None:
        barrier.wait()
        try:
            schedules.run_due(now)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    schedules.run_due(now)
    assert len(nightly_keys()) == 2


def test_the_schedule_command_starts_each_due_tick_once(capsys):
    minute = timezone.now().replace(second=0, microsecond=0)
    call_command("sequence", "schedule")
    call_command("sequence", "schedule")
    ticks = 1 if timezone.now() - minute < timedelta(minutes=1) else 2  # crossed a minute
    out = capsys.readouterr().out
    assert out.count("Started tests.EveryMinute #") == ticks
    assert SequenceRecord.objects.filter(name="tests.EveryMinute").count() == ticks
