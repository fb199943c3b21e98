"""The tick arithmetic: which real instants a cron expression names, through DST changes."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from sequence.declare import cron
from sequence.declare.exceptions import ConfigurationError

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # a 30-minute shift

# The 2026 changes, in UTC: (zone, spring forward, autumn back).
CHANGES = {
    "Europe/London": (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC)),
    "America/New_York": (datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC)),
    "Australia/Lord_Howe": (
        datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
        datetime(2026, 4, 4, 15, tzinfo=UTC),
    ),
}
MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def in_utc(ticks: list[datetime]) -> list[str]:
    """Ticks as UTC times: local datetimes in one zone compare ignoring fold, so never compare them."""
    return [t.astimezone(UTC).strftime("%m-%d %H:%M") for t in ticks]


def gaps(ticks: list[datetime]) -> set[timedelta]:
    real = [t.astimezone(UTC) for t in ticks]
    return {b - a for a, b in itertools.pairwise(real)}


def around(change: datetime, hours: int = 6) -> tuple[datetime, datetime]:
    return change - timedelta(hours=hours), change + timedelta(hours=hours)


# -- validating ----------------------------------------------------------------------------


@pytest.mark.parametrize("expression", ["0 9 * * *", "*/30 * * * *", "@daily", "0 9 L * *"])
def test_a_five_field_expression_that_fires_is_accepted(expression):
    cron.check_cron("daily", expression)
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    tick = cron.next_tick(expression, LONDON, now)
    assert now < tick <= now + timedelta(days=31)


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("0 9 * *", "Exactly 5, 6 or 7 columns"),
        ("0 9 * * * 30", "6 fields; seconds and years are not supported"),
        ("0 0 30 2 *", "names no time that ever comes"),
        ("every day", "Exactly 5, 6 or 7 columns"),
        (None, "not a string but NoneType"),
    ],
)
def test_an_invalid_expression_names_the_schedule_the_value_and_the_fix(expression, reason):
    with pytest.raises(ConfigurationError) as caught:
        cron.check_cron("at_nine", expression)
    message = str(caught.value)
    assert message.startswith(f"Schedule 'at_nine' has an invalid cron expression {expression!r}")
    assert reason in message
    assert "such as '0 9 * * *'" in message


# -- every N minutes: real time --------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York"])
@pytest.mark.parametrize("which", [0, 1], ids=["spring", "autumn"])
@pytest.mark.parametrize(("expression", "step"), [("*/30 * * * *", 30), ("*/15 * * * *", 15)])
def test_every_n_minutes_fires_every_n_minutes_of_real_time_through_a_change(
    zone, which, expression, step
):
    start, end = around(CHANGES[zone][which])
    ticks = ticks_between(expression, ZoneInfo(zone), start, end)
    assert gaps(ticks) == {timedelta(minutes=step)}
    assert len(ticks) == 12 * 60 // step


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York"])
@pytest.mark.parametrize("which", [0, 1], ids=["spring", "autumn"])
@pytest.mark.parametrize("expression", ["0 * * * *", "30 * * * *"])
def test_hourly_fires_every_hour_of_real_time_through_a_change(zone, which, expression):
    start, end = around(CHANGES[zone][which])
    ticks = ticks_between(expression, ZoneInfo(zone), start, end)
    assert gaps(ticks) == {timedelta(hours=1)}
    assert len(ticks) == 12


def test_the_repeated_autumn_hour_in_london_gets_its_half_hour_ticks():
    ticks = ticks_between("*/30 * * * *", LONDON, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2))
    assert [t.isoformat(timespec="minutes") for t in ticks] == [
        "2026-10-25T01:00+01:00",
        "2026-10-25T01:30+01:00",
        "2026-10-25T01:00+00:00",
        "2026-10-25T01:30+00:00",
        "2026-10-25T02:00+00:00",
    ]


def test_latest_tick_just_after_the_london_autumn_change_is_minutes_old():
    # croniter from "now + 1 microsecond" lost the fold here and answered 00:00Z.
    tick = cron.latest_tick("*/30 * * * *", LONDON, utc(2026, 10, 25, 1, 5))
    assert tick.astimezone(UTC) == utc(2026, 10, 25, 1)
    assert tick.isoformat(timespec="minutes") == "2026-10-25T01:00+00:00"


def test_the_skipped_spring_hour_in_new_york_is_not_made_up():
    ticks = ticks_between("*/30 * * * *", NEW_YORK, utc(2026, 3, 8, 6, 15), utc(2026, 3, 8, 7, 45))
    assert [t.isoformat(timespec="minutes") for t in ticks] == [
        "2026-03-08T01:30-05:00",
        "2026-03-08T03:00-04:00",
        "2026-03-08T03:30-04:00",
    ]


# -- daily: once a day -----------------------------------------------------------------------


def local_days(ticks: list[datetime], tz: ZoneInfo) -> list[str]:
    return [t.astimezone(tz).date().isoformat() for t in ticks]


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York"])
@pytest.mark.parametrize("which", [0, 1], ids=["spring", "autumn"])
@pytest.mark.parametrize("expression", ["0 9 * * *", "30 1 * * *", "30 2 * * *", "0 0 * * *"])
def test_daily_fires_once_on_each_day_around_a_change(zone, which, expression):
    tz = ZoneInfo(zone)
    change = CHANGES[zone][which]
    start = datetime.combine(
        change.astimezone(tz).date() - timedelta(days=3), datetime.min.time(), tz
    )
    ticks = ticks_between(expression, tz, start, start + timedelta(days=7))
    days = local_days(ticks, tz)
    assert len(days) == len(set(days)) == 7


def test_a_daily_time_in_the_repeated_hour_fires_at_its_first_occurrence():
    ticks = ticks_between("30 1 * * *", LONDON, utc(2026, 10, 24, 12), utc(2026, 10, 25, 12))
    assert [t.isoformat() for t in ticks] == ["2026-10-25T01:30:00+01:00"]
    ticks = ticks_between("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), utc(2026, 11, 1, 12))
    assert [t.isoformat() for t in ticks] == ["2026-11-01T01:30:00-04:00"]


def test_a_daily_time_in_the_skipped_hour_fires_when_the_clocks_jump():
    ticks = ticks_between("30 1 * * *", LONDON, utc(2026, 3, 28, 12), utc(2026, 3, 29, 12))
    assert [t.isoformat() for t in ticks] == ["2026-03-29T02:00:00+01:00"]
    ticks = ticks_between("30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), utc(2026, 3, 8, 12))
    assert [t.isoformat() for t in ticks] == ["2026-03-08T03:00:00-04:00"]


def test_nine_in_the_morning_stays_nine_local_across_a_change():
    ticks = ticks_between("0 9 * * *", NEW_YORK, utc(2026, 3, 7), utc(2026, 3, 10))
    assert in_utc(ticks) == ["03-07 14:00", "03-08 13:00", "03-09 13:00"]


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize("zone", ["Europe/London", "America/New_York", "Australia/Lord_Howe"])
def test_every_tick_of_a_change_night_writes_a_different_key(zone):
    tz = ZoneInfo(zone)
    for change in CHANGES[zone]:
        ticks = ticks_between("*/30 * * * *", tz, *around(change))
        keys = [t.isoformat(timespec="minutes") for t in ticks]
        assert len(set(keys)) == len(keys) == len(set(in_utc(ticks)))


# -- against a minute-by-minute reading of the rules -------------------------------------------


def matches(expression: str):
    """A plain matcher for the simple expressions below (croniter.match is too slow here)."""
    fields = croniter(expression).expanded[:5]
    allowed = [None if f == ["*"] else set(f) for f in fields]

    def match(wall: datetime) -> bool:
        values = (wall.minute, wall.hour, wall.day, wall.month, wall.isoweekday() % 7)
        return all(a is None or v in a for a, v in zip(allowed, values, strict=True))

    return match


def reference(expression: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[str]:
    """Walk every real minute in (start, end] and apply the documented rules literally."""
    every_hour = cron.every_hour(expression)
    match = matches(expression)
    found = []
    at = start.replace(second=0, microsecond=0) + MINUTE
    while at <= end:
        local, before = at.astimezone(tz), (at - MINUTE).astimezone(tz)
        wall = local.replace(tzinfo=None)
        ticks = match(wall) and (every_hour or local.fold == 0)
        if not every_hour and local.utcoffset() > before.utcoffset():  # type: ignore[operator]
            skipped = before.replace(tzinfo=None) + MINUTE
            while skipped < wall:
                ticks = ticks or match(skipped)
                skipped += MINUTE
        if ticks:
            found.append(at.strftime("%m-%d %H:%M"))
        at += MINUTE
    return found


def test_the_reference_reads_croniter_fields_as_croniter_does():
    for expression in EXPRESSIONS:
        match = matches(expression)
        at = datetime(2026, 3, 1)  # a Sunday
        while at < datetime(2026, 3, 3):
            assert match(at) == croniter.match(expression, at), (expression, at)
            at += timedelta(minutes=5)


EXPRESSIONS = [
    "*/30 * * * *",
    "*/20 * * * *",
    "0 * * * *",
    "45 * * * *",
    "0 9 * * *",
    "30 1 * * *",
    "30 2 * * *",
    "0 1,2 * * *",
    "*/20 1-3 * * *",
    "15 2 * * 0",
]
TRANSITIONS = [(zone, change) for zone, pair in CHANGES.items() for change in pair]
CHANGE_IDS = [f"{zone}-{which}" for zone in CHANGES for which in ("spring", "autumn")]


@pytest.mark.parametrize("expression", EXPRESSIONS)
@pytest.mark.parametrize(("zone", "change"), TRANSITIONS, ids=CHANGE_IDS)
def test_ticks_between_agree_with_the_rules_read_minute_by_minute(expression, zone, change):
    tz = ZoneInfo(zone)
    start, end = around(change, hours=5)
    assert in_utc(ticks_between(expression, tz, start, end)) == reference(
        expression, tz, start, end
    )


@settings(max_examples=100, deadline=None)
@given(
    expression=st.sampled_from([e for e in EXPRESSIONS if e.endswith("* * *")]),
    where=st.sampled_from(TRANSITIONS),
    minutes=st.integers(min_value=-150, max_value=150),
    seconds=st.integers(min_value=0, max_value=59),
)
def test_latest_and_next_tick_agree_with_the_rules(expression, where, minutes, seconds):
    zone, change = where
    tz = ZoneInfo(zone)
    now = change + timedelta(minutes=minutes, seconds=seconds)
    day = timedelta(days=1, hours=3)  # every expression here fires at least once a day
    past, future = (
        reference(expression, tz, now - day, now),
        reference(expression, tz, now, now + day),
    )
    assert in_utc([cron.latest_tick(expression, tz, now)]) == past[-1:]
    assert in_utc([cron.next_tick(expression, tz, now)]) == future[:1]


def test_a_tick_exactly_now_is_the_latest_and_not_the_next():
    now = utc(2026, 6, 1, 9, 30)
    assert cron.latest_tick("*/30 * * * *", LONDON, now).astimezone(UTC) == utc(2026, 6, 1, 9, 30)
    assert cron.next_tick("*/30 * * * *", LONDON, now).astimezone(UTC) == utc(2026, 6, 1, 10)


def test_a_rare_expression_finds_its_tick_years_away():
    tick = cron.next_tick("0 0 29 2 *", LONDON, utc(2026, 10, 25, 1, 5))
    assert tick.isoformat() == "2028-02-29T00:00:00+00:00"
    assert cron.latest_tick("0 0 29 2 *", LONDON, utc(2026, 10, 25)).year == 2024


def test_a_naive_now_is_refused():
    with pytest.raises(ValueError, match="naive"):
        cron.latest_tick("* * * * *", LONDON, datetime(2026, 1, 1))


def ticks_between(expression: str, tz: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    """Every tick after ``start`` and at or before ``end``, in order, in ``tz``: the
    schedules' next tick, asked again and again."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    found: list[datetime] = []
    at = start
    while True:
        at = cron.next_tick(expression, tz, at).astimezone(UTC)
        if at > end:
            return [t.astimezone(tz) for t in found]
        found.append(at)
