"""Signals ``sequence`` sends, each after the commit that records its event.

Every signal is sent with ``sender`` the Sequence subclass and ``sequence`` the handle.
A receiver that raises is logged (with its traceback, secrets masked) and does not stop
the other receivers, the sequence, or the request that caused the event.
"""

from __future__ import annotations

from django.dispatch import Signal

sequence_started = Signal()  # its first step queued (a queued one's: when it got a place)
sequence_queued = Signal()  # the record is saved queued: its Concurrency key is full
step_completed = Signal()  # also: step (name), step_index, attempt
step_failed = Signal()  # also: step, step_index, attempt, error, will_retry
sequence_completed = Signal()  # the last step committed
sequence_failed = Signal()  # also: error; after compensations ran
sequence_canceled = Signal()
sequence_paused = Signal()
sequence_resumed = Signal()
sequence_retried = Signal()  # a failed sequence was sent back to its failed step
sequence_sleeping = Signal()  # also: wake_at; a Sleep began
sequence_waiting = Signal()  # also: event, timeout_at; a WaitFor began (no event was there)
event_received = Signal()  # also: event, data, event_id; send() stored an event
