"""Cron schedules start one sequence per tick, in settings.TIME_ZONE."""

from __future__ import annotations

import io
import itertools
import json
import threading
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from sequence import Schedule, Sequence
from sequence.engine import schedules
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


# -- daylight saving, failures, describe -----------------------------------------------------

LONDON, NEW_YORK = "Europe/London", "America/New_York"
# The 2026 changes, in UTC.
CHANGES = {
    (LONDON, "spring"): datetime(2026, 3, 29, 1, tzinfo=UTC),
    (LONDON, "autumn"): datetime(2026, 10, 25, 1, tzinfo=UTC),
    (NEW_YORK, "spring"): datetime(2026, 3, 8, 7, tzinfo=UTC),
    (NEW_YORK, "autumn"): datetime(2026, 11, 1, 6, tzinfo=UTC),
}


@pytest.fixture
def use_schedules(monkeypatch):
    """Give testapp.Nightly these schedules, and the other test sequences none."""

    def use(*given: Schedule) -> None:
        monkeypatch.setattr(Nightly, "schedules", list(given))
        monkeypatch.setattr(EveryMinute, "schedules", [])

    return use


def poll(start: datetime, end: datetime, every: timedelta = timedelta(minutes=4)) -> None:
    """Run the scheduler at ``start``, then every ``every`` until past ``end``, as a worker would."""
    now = start
    while now <= end + every:
        schedules.run_due(now)
        now += every


def started(schedule: str) -> list[str]:
    keys = SequenceRecord.objects.filter(
        name="testapp.Nightly", key__startswith=f"schedule:{schedule}:"
    ).values_list("key", flat=True)
    return sorted(keys, key=lambda k: datetime.fromisoformat(k.split(":", 2)[2]))


def real_gaps(keys: list[str]) -> set[timedelta]:
    ticks = [datetime.fromisoformat(k.split(":", 2)[2]).astimezone(UTC) for k in keys]
    return {b - a for a, b in itertools.pairwise(ticks)}


@pytest.mark.parametrize(("zone", "which"), list(CHANGES), ids=["-".join(k) for k in CHANGES])
def test_schedules_never_skip_or_double_a_tick_across_a_change(zone, which, use_schedules):
    use_schedules(
        Schedule("half", cron="*/30 * * * *"),
        Schedule("hourly", cron="0 * * * *"),
        Schedule("at_0130", cron="30 1 * * *"),
        Schedule("at_0230", cron="30 2 * * *"),
    )
    change = CHANGES[zone, which]
    with override_settings(TIME_ZONE=zone):
        poll(change - timedelta(hours=5) + timedelta(minutes=1), change + timedelta(hours=5))
    # Ten hours of real time, both ends included.
    assert len(started("half")) == 21
    assert real_gaps(started("half")) == {timedelta(minutes=30)}
    assert len(started("hourly")) == 11
    assert real_gaps(started("hourly")) == {timedelta(hours=1)}
    # Daily times inside the skipped or repeated hour still fire once that night.
    assert len(started("at_0130")) == 1
    assert len(started("at_0230")) == 1


def test_the_london_autumn_night_starts_both_half_hours_of_the_repeated_hour(use_schedules):
    use_schedules(Schedule("half", cron="*/30 * * * *"), Schedule("at_0130", cron="30 1 * * *"))
    with override_settings(TIME_ZONE=LONDON):
        poll(datetime(2026, 10, 24, 23, 1, tzinfo=UTC), datetime(2026, 10, 25, 2, tzinfo=UTC))
    assert started("half") == [
        "schedule:half:2026-10-25T00:00+01:00",
        "schedule:half:2026-10-25T00:30+01:00",
        "schedule:half:2026-10-25T01:00+01:00",
        "schedule:half:2026-10-25T01:30+01:00",
        "schedule:half:2026-10-25T01:00+00:00",
        "schedule:half:2026-10-25T01:30+00:00",
        "schedule:half:2026-10-25T02:00+00:00",
    ]
    assert started("at_0130") == ["schedule:at_0130:2026-10-25T01:30+01:00"]


def test_a_daily_time_in_the_skipped_hour_starts_when_the_clocks_jump(use_schedules):
    use_schedules(Schedule("at_0230", cron="30 2 * * *"))
    with override_settings(TIME_ZONE=NEW_YORK):
        poll(datetime(2026, 3, 8, 6, 1, tzinfo=UTC), datetime(2026, 3, 8, 8, tzinfo=UTC))
    assert started("at_0230") == ["schedule:at_0230:2026-03-08T03:00-04:00"]


def test_a_daily_schedule_starts_once_a_day_through_a_week_with_a_change(use_schedules):
    use_schedules(Schedule("at_nine", cron="0 9 * * *"))
    with override_settings(TIME_ZONE=NEW_YORK):
        for day in range(5, 12):  # 09:00 is 14:00Z before the change, 13:00Z after it
            for hour in (12, 13, 14, 15):
                schedules.run_due(datetime(2026, 3, day, hour, 2, tzinfo=UTC))
    assert [k.split(":", 2)[2] for k in started("at_nine")] == [
        f"2026-03-{day:02}T09:00{'-05:00' if day < 8 else '-04:00'}" for day in range(5, 12)
    ]


def raise_error() -> dict[str, str]:
    raise RuntimeError("no report today")


def test_a_schedule_whose_data_raises_does_not_stop_the_others(use_schedules, caplog):
    use_schedules(
        Schedule("broken", cron="* * * * *", data=raise_error),
        Schedule("fine", cron="* * * * *"),
    )
    now = datetime(2026, 6, 1, 9, 0, 10, tzinfo=UTC)
    assert len(schedules.run_due(now)) == 1
    assert started("fine") == ["schedule:fine:2026-06-01T09:00+00:00"]
    assert "Schedule broken of testapp.Nightly could not start" in caplog.text
    assert "no report today" in caplog.text


def test_a_tick_whose_data_raises_is_skipped_not_tried_again(use_schedules, caplog):
    calls = []

    def flaky() -> dict[str, str]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("not today")
        return {"ok": "yes"}

    use_schedules(Schedule("flaky", cron="* * * * *", data=flaky))
    now = datetime(2026, 6, 1, 9, 0, 10, tzinfo=UTC)
    assert schedules.run_due(now) == []
    assert "its tick 2026-06-01T09:00+00:00 is skipped" in caplog.text
    schedules._skipped_here.clear()  # as another scheduler process: Redis tells it
    for later in (20, 50):
        assert schedules.run_due(now.replace(second=later)) == []
    assert len(calls) == 1  # called once for that tick, by every scheduler
    # The next tick is another matter.
    [next_one] = schedules.run_due(now + timedelta(minutes=1))
    assert next_one.data == {"ok": "yes"}
    assert started("flaky") == ["schedule:flaky:2026-06-01T09:01+00:00"]


def test_a_schedule_whose_tick_cannot_be_computed_does_not_stop_the_others(use_schedules, caplog):
    never = Schedule("never", cron="* * * * *")
    # Past the check a definition gets: February 30th never comes.
    object.__setattr__(never, "cron", "0 0 30 2 *")
    use_schedules(never, Schedule("fine", cron="* * * * *"))
    now = datetime(2026, 6, 1, 9, 0, 10, tzinfo=UTC)
    assert len(schedules.run_due(now)) == 1
    assert started("fine") == ["schedule:fine:2026-06-01T09:00+00:00"]
    assert "Schedule never of testapp.Nightly: no tick found" in caplog.text
    assert [r["next_tick"] for r in nightly_rows(now)] == [None, "2026-06-01T09:01+00:00"]


def nightly_rows(now: datetime | None = None) -> list[dict]:
    return [r for r in schedules.describe(now) if r["sequence"] == "testapp.Nightly"]


def test_describe_shows_each_schedules_last_started_and_next_tick(use_schedules):
    use_schedules(
        Schedule("report", cron="0 9 * * *"),
        Schedule("report:eu", cron="30 * * * *"),
        Schedule("idle", cron="0 0 1 1 *"),
    )
    with override_settings(TIME_ZONE=LONDON):
        schedules.run_due(datetime(2026, 10, 24, 8, 0, 30, tzinfo=UTC))
        schedules.run_due(datetime(2026, 10, 24, 8, 30, 30, tzinfo=UTC))
        rows = nightly_rows(datetime(2026, 10, 25, 0, 45, tzinfo=UTC))
    report = SequenceRecord.objects.get(key="schedule:report:2026-10-24T09:00+01:00")
    assert rows == [
        {
            "sequence": "testapp.Nightly",
            "schedule": "report",
            "cron": "0 9 * * *",
            "time_zone": "Europe/London",
            "last_tick": "2026-10-24T09:00+01:00",
            "last_id": report.pk,
            "next_tick": "2026-10-25T09:00+00:00",
        },
        {
            "sequence": "testapp.Nightly",
            "schedule": "report:eu",
            "cron": "30 * * * *",
            "time_zone": "Europe/London",
            "last_tick": "2026-10-24T09:30+01:00",
            "last_id": report.pk + 1,
            # 00:45Z is 01:45 BST: next comes 01:30 GMT, the repeated hour's second half hour.
            "next_tick": "2026-10-25T01:30+00:00",
        },
        {
            "sequence": "testapp.Nightly",
            "schedule": "idle",
            "cron": "0 0 1 1 *",
            "time_zone": "Europe/London",
            "last_tick": None,
            "last_id": None,
            "next_tick": "2027-01-01T00:00+00:00",
        },
    ]


def test_the_schedules_command_lists_every_schedule(use_schedules):
    use_schedules(Schedule("report", cron="0 9 * * *"), Schedule("idle", cron="0 0 1 1 *"))
    schedules.run_due(datetime(2026, 6, 1, 9, 0, 30, tzinfo=UTC))
    out = io.StringIO()
    call_command("sequence", "schedules", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "SEQUENCE",
        "SCHEDULE",
        "CRON",
        "TIME",
        "ZONE",
        "LAST",
        "TICK",
        "NEXT",
        "TICK",
    ]
    report = next(line for line in lines if " report " in line)
    assert report.startswith("testapp.Nightly  report")
    assert "0 9 * * *" in report
    assert "UTC" in report
    assert "2026-06-01T09:00+00:00" in report
    idle = next(line for line in lines if " idle " in line)
    assert " never " in idle


def test_the_schedules_command_prints_json_for_programs(use_schedules):
    use_schedules(Schedule("half", cron="*/30 * * * *"))
    out = io.StringIO()
    call_command("sequence", "schedules", "--json", stdout=out)
    rows = [r for r in json.loads(out.getvalue()) if r["sequence"] == "testapp.Nightly"]
    assert [(r["schedule"], r["cron"], r["time_zone"], r["last_tick"]) for r in rows] == [
        ("half", "*/30 * * * *", "UTC", None)
    ]
    upcoming = datetime.fromisoformat(rows[0]["next_tick"])
    assert timezone.now() < upcoming <= timezone.now() + timedelta(minutes=30)
    assert upcoming.minute in (0, 30)


def test_the_schedules_command_says_when_there_are_none(monkeypatch):
    monkeypatch.setattr(schedules, "registered", dict)
    out = io.StringIO()
    call_command("sequence", "schedules", stdout=out)
    assert out.getvalue() == "No schedules.\n"


@pytest.mark.parametrize("cron", ["0 25 * * *", "every day", "0 0 30 2 *"])
def test_an_invalid_cron_is_a_configuration_error_naming_the_schedule(cron):
    from sequence import ConfigurationError

    with pytest.raises(ConfigurationError, match="nightly_report") as raised:

        class Broken(Sequence):
            name = "tests.BrokenSchedule"
            steps = [A]
            schedules = [Schedule("nightly_report", cron=cron)]

    assert repr(cron) in str(raised.value) or cron in str(raised.value)
