"""Cron arithmetic: the real instants a cron expression names in a time zone.

Pure functions of the expression, a ``zoneinfo.ZoneInfo`` and an aware ``now``: no
settings, no clock, no models, so tests can set any instant and any zone.

A cron expression names wall-clock times. croniter finds them on naive datetimes (plain
calendar arithmetic, no daylight saving), and this module maps each one to real
instants itself, because a wall time can happen once, twice or never:

- Once: that instant.
- Twice (the autumn change repeats an hour): only the first occurrence, unless the hour
  field is ``*``, when both are ticks. ``0 9 * * *`` or ``30 1 * * *`` asks for once a
  day; ``*/30 * * * *`` or ``15 * * * *`` asks for every N minutes or every hour, and
  the repeated hour is real time that passes, so it gets its ticks too.
- Never (the spring change skips an hour): with ``*`` in the hour field, nothing, since
  the next wall time after the gap is already the next tick of real time (``*/30`` in
  London: 00:30 GMT, then 02:00 BST, thirty minutes later). Otherwise once, at the first
  instant after the gap, so a daily ``30 1 * * *`` in London still runs that day.

So an every-N-minutes schedule fires every N minutes of real time through both changes
(when N divides the shift, as any N dividing 60 does for the usual one-hour shift), and a
daily one once a day. docs/schedules.md says the same for users.

croniter's own time-zone handling (7.0) differs: it fires a repeated wall time twice
whatever the hour field, so a daily ``30 1 * * *`` runs twice on the autumn night.

Beware that aware datetimes sharing one ``tzinfo`` compare and subtract by wall time,
ignoring ``fold``: 01:30 BST and 01:30 GMT are "equal". So instants are compared in UTC
here, and only converted to the zone when returned.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from sequence.declare.exceptions import ConfigurationError

EXAMPLES = "such as '0 9 * * *' (09:00 every day) or '*/30 * * * *' (every 30 minutes)"

# Offsets are sampled this far around an instant: wider than any change of UTC offset in
# the tz database (Pacific/Apia's 24 hours in 2011), so every wall time an instant there
# can have is covered.
REACH = timedelta(days=2)
SAMPLE = timedelta(hours=1)


def check_cron(schedule_name: str, cron: object) -> None:
    """Raise ``ConfigurationError`` unless ``cron`` is a five-field cron expression that fires."""
    reason = _problem(cron)
    if reason:
        raise ConfigurationError(
            f"Schedule {schedule_name!r} has an invalid cron expression {cron!r}: {reason}. "
            f"Write five fields, minute hour day-of-month month day-of-week, {EXAMPLES}."
        )


def _problem(cron: object) -> str:
    if not isinstance(cron, str):
        return f"it is not a string but {type(cron).__name__}"
    try:
        fields = croniter(cron).expanded
    except Exception as exc:  # croniter raises several unrelated types (KeyError too)
        return str(exc).rstrip(".") or type(exc).__name__
    if len(fields) != 5:
        # Start keys and the window count in minutes: a seconds field would collide.
        return f"it has {len(fields)} fields; seconds and years are not supported"
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(datetime)
    except Exception:
        return "it names no time that ever comes"
    return ""


def latest_tick(cron: str, tz: ZoneInfo, now: datetime) -> datetime:
    """The last tick at or before ``now``, in ``tz``."""
    now = _utc(now)
    walls = croniter(cron, _wall(now, _offsets(tz, now - REACH, now)[1]) + timedelta(minutes=1))
    best, stop = None, datetime.min
    while True:
        wall: datetime = walls.get_prev(datetime)
        # Near a change, wall order and real order differ by up to the shift: go on
        # until no earlier wall time can map past the best tick.
        if best is not None and wall < stop:
            return best.astimezone(tz)
        for at in instants(cron, tz, wall):
            if at <= now and (best is None or at > best):
                best = at
                stop = _wall(best, _offsets(tz, best, min(best + REACH, now))[0])


def next_tick(cron: str, tz: ZoneInfo, now: datetime) -> datetime:
    """The first tick after ``now``, in ``tz``."""
    now = _utc(now)
    walls = croniter(cron, _wall(now, _offsets(tz, now, now + REACH)[0]) - timedelta(minutes=1))
    best, stop = None, datetime.max
    while True:
        wall: datetime = walls.get_next(datetime)
        if best is not None and wall > stop:
            return best.astimezone(tz)
        for at in instants(cron, tz, wall):
            if at > now and (best is None or at < best):
                best = at
                stop = _wall(best, _offsets(tz, max(best - REACH, now), best)[1])


@functools.lru_cache(maxsize=256)
def every_hour(cron: str) -> bool:
    """Whether the hour field matches every hour (``*``, ``*/1``, ``0-23``)."""
    hours: list[Any] = croniter(cron).expanded[1]
    return hours == ["*"]


def instants(cron: str, tz: ZoneInfo, wall: datetime) -> list[datetime]:
    """The real instants (in UTC) at which the naive wall time ``wall`` is a tick."""
    first, second = wall.replace(tzinfo=tz, fold=0), wall.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return [first.astimezone(UTC)]
    if _utc(first) < _utc(second):  # repeated: fold=0 is the first occurrence
        return [_utc(first), _utc(second)] if every_hour(cron) else [_utc(first)]
    # Skipped: fold=0 reads it with the old offset (an instant after the change), fold=1
    # with the new one (an instant before it).
    return [] if every_hour(cron) else [_change(tz, _utc(second), _utc(first))]


def _change(tz: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant the offset changes, between ``before`` (old offset) and ``after`` (new)."""
    old = before.astimezone(tz).utcoffset()
    lo, hi = int(before.timestamp()), int(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


def _offsets(tz: ZoneInfo, start: datetime, end: datetime) -> tuple[timedelta, timedelta]:
    """The smallest and largest UTC offset of ``tz`` from ``start`` to ``end``."""
    found = set()
    at = start
    while at < end:
        found.add(at.astimezone(tz).utcoffset())
        at += SAMPLE
    found.add(end.astimezone(tz).utcoffset())
    offsets = [o for o in found if o is not None]
    return min(offsets), max(offsets)


def _wall(at: datetime, offset: timedelta) -> datetime:
    """The naive wall time of the UTC instant ``at`` under ``offset``."""
    return (at + offset).replace(tzinfo=None)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at!r} is naive; pass an aware datetime such as timezone.now().")
    return at.astimezone(UTC)
