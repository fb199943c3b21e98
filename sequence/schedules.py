"""Cron schedules: start one sequence per tick, however many schedulers run.

Each tick starts its sequence with the start key ``schedule:<name>:<tick>``; the
unique key makes a second scheduler's start for the same tick return the first one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from croniter import croniter
from django.utils import timezone

from sequence.conf import settings
from sequence.definitions import Schedule, SequenceDefinition
from sequence.models import SequenceRecord
from sequence.registry import registered
from sequence.starting import start

logger = logging.getLogger("sequence")


@dataclass(frozen=True)
class Tick:
    sequence: type[SequenceDefinition]
    schedule: Schedule
    at: datetime

    @property
    def key(self) -> str:
        return f"schedule:{self.schedule.name}:{self.at.isoformat(timespec='minutes')}"


def latest_tick(schedule: Schedule, now: datetime) -> datetime:
    """The last time at or before ``now`` the schedule fires, in the current time zone."""
    local = timezone.localtime(now)
    return croniter(schedule.cron, local + timedelta(microseconds=1)).get_prev(datetime)  # type: ignore[no-any-return]


def due(now: datetime | None = None, window: int | None = None) -> list[Tick]:
    """Ticks that fired within the last ``window`` seconds."""
    now = now or timezone.now()
    window = settings.SCHEDULE_WINDOW if window is None else window
    ticks = []
    for cls in registered().values():
        for schedule in cls.schedules:
            at = latest_tick(schedule, now)
            if now - at <= timedelta(seconds=window):
                ticks.append(Tick(cls, schedule, at))
    return ticks


def run_due(now: datetime | None = None) -> list[SequenceDefinition]:
    """Start the sequence of every due tick not started yet; return the new handles."""
    started = []
    for tick in due(now):
        seen = SequenceRecord.objects.filter(name=tick.sequence.name, key=tick.key)
        if seen.exists():
            continue
        try:
            record = start(tick.sequence, tick.schedule.make_data(), key=tick.key)
            started.append(tick.sequence._bind(record))
        except Exception:
            logger.exception(
                "Schedule %s of %s could not start", tick.schedule.name, tick.sequence.name
            )
    return started
