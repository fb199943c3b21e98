"""Cron schedules: start one sequence per tick, however many schedulers run.

Each tick starts its sequence with the start key ``schedule:<name>:<tick>``, the tick
written with its UTC offset in ``settings.TIME_ZONE`` (so the two 01:30s of an autumn
night differ); the unique key makes a second scheduler's start for the same tick return
the first one. Which instants are ticks is decided in :mod:`sequence.declare.cron`.

A tick whose ``data`` callable raises (or gives data ``start`` refuses) is skipped: a
marker in Redis, kept as long as the tick can be due, tells every scheduler so, and this
process remembers it too (should Redis be out of reach).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.utils import timezone

from sequence.declare import cron
from sequence.declare.conf import settings
from sequence.declare.definitions import SequenceDefinition
from sequence.declare.exceptions import InvalidData
from sequence.declare.registry import registered
from sequence.declare.schedule import Schedule, SkipTick
from sequence.engine.rq.dispatch import get_queue, queue_for
from sequence.engine.starting import start
from sequence.models import SequenceRecord

logger = logging.getLogger("sequence")


@dataclass(frozen=True)
class Tick:
    sequence: type[SequenceDefinition]
    schedule: Schedule
    at: datetime

    @property
    def key(self) -> str:
        return key_prefix(self.schedule) + self.at.isoformat(timespec="minutes")


def key_prefix(schedule: Schedule) -> str:
    """The start keys of a schedule's ticks begin with this."""
    return f"schedule:{schedule.name}:"


def time_zone() -> ZoneInfo:
    """The zone schedules run in: ``settings.TIME_ZONE`` (not the active one of a request)."""
    return timezone.get_default_timezone()


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The last time at or before ``now`` the schedule fires, in ``settings.TIME_ZONE``."""
    return cron.latest_tick(schedule.cron, time_zone(), now)


def due(now: datetime | None = None, window: int | None = None) -> list[Tick]:
    """Ticks that fired within the last ``window`` seconds; a schedule that fails is logged."""
    now = now or timezone.now()
    window = settings.SCHEDULE_WINDOW if window is None else window
    ticks = []
    for cls, schedule in _schedules():
        try:
            at = latest_tick(schedule, now)
        except Exception:
            logger.exception("Schedule %s of %s: no tick found", schedule.name, cls.name)
            continue
        # In UTC: datetimes sharing one zone subtract by wall time, ignoring fold.
        if now.astimezone(UTC) - at.astimezone(UTC) <= timedelta(seconds=window):
            ticks.append(Tick(cls, schedule, at))
    return ticks


def run_due(now: datetime | None = None) -> list[SequenceDefinition]:
    """Start the sequence of every due tick not started yet; return the new handles.

    A tick whose data callable raises, or whose data is refused, is skipped (logged
    once); one that could not start for another reason (the database, say) is tried
    again by the next pass.
    """
    started = []
    for tick in due(now):
        seen = SequenceRecord.objects.filter(name=tick.sequence.name, key=tick.key)
        if seen.exists() or _skipped(tick):
            continue
        try:
            record = start(tick.sequence, tick.schedule.make_data(), key=tick.key)
        except (SkipTick, InvalidData):
            _skip(tick)
            continue
        except Exception:
            logger.exception(
                "Schedule %s of %s could not start", tick.schedule.name, tick.sequence.name
            )
            continue
        started.append(tick.sequence._bind(record))
    return started


# Ticks skipped, as this process knows (the Redis marker tells the others).
_skipped_here: set[str] = set()


def _marker(tick: Tick) -> str:
    return f"sequence:schedule-skipped:{tick.sequence.name}:{tick.key}"


def _connection(tick: Tick) -> Any:
    return get_queue(queue_for(None, tick.sequence.queue or settings.QUEUE)).connection


def _skip(tick: Tick) -> None:
    logger.exception(
        "Schedule %s of %s could not start; its tick %s is skipped", tick.schedule.name,
        tick.sequence.name, tick.at.isoformat(timespec="minutes"),
    )  # fmt: skip
    _skipped_here.add(_marker(tick))
    try:
        _connection(tick).set(_marker(tick), 1, ex=settings.SCHEDULE_WINDOW + 60)
    except Exception:
        logger.warning("Schedule %s: could not mark its skipped tick in Redis", tick.key)


def _skipped(tick: Tick) -> bool:
    if _marker(tick) in _skipped_here:
        return True
    try:
        return bool(_connection(tick).exists(_marker(tick)))
    except Exception:
        return False


def describe(now: datetime | None = None) -> list[dict[str, Any]]:
    """One row per schedule: where it runs, the last tick started and the next one."""
    now = now or timezone.now()
    tz = time_zone()
    rows = []
    for cls, schedule in _schedules():
        last = _last_started(cls, schedule)
        try:
            upcoming: str | None = cron.next_tick(schedule.cron, tz, now).isoformat(
                timespec="minutes"
            )
        except Exception:
            logger.exception("Schedule %s of %s: no next tick", schedule.name, cls.name)
            upcoming = None
        rows.append(
            {
                "sequence": cls.name,
                "schedule": schedule.name,
                "cron": schedule.cron,
                "time_zone": str(tz),
                "last_tick": last[0] if last else None,
                "last_id": last[1] if last else None,
                "next_tick": upcoming,
            }
        )
    return rows


def _schedules() -> list[tuple[type[SequenceDefinition], Schedule]]:
    return [(cls, s) for cls in registered().values() for s in cls.schedules]


def _last_started(cls: type[SequenceDefinition], schedule: Schedule) -> tuple[str, int] | None:
    """The tick (as its key writes it) and id of the newest sequence the schedule started."""
    prefix = key_prefix(schedule)
    records = SequenceRecord.objects.filter(name=cls.name, key__startswith=prefix)
    # Schedule "a" must not claim the keys of a sibling named "a:b".
    for other in cls.schedules:
        if other is not schedule and key_prefix(other).startswith(prefix):
            records = records.exclude(key__startswith=key_prefix(other))
    newest = records.order_by("-id").values_list("key", "id").first()
    if newest is None:
        return None
    key, pk = newest
    return str(key).removeprefix(prefix), pk
