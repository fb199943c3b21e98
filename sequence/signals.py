"""Signals ``sequence`` sends, each after the commit that records its event.

Every signal is sent with ``sender`` the Sequence subclass and ``sequence`` the handle.
"""

from __future__ import annotations

from django.dispatch import Signal

sequence_started = Signal()
step_completed = Signal()  # also: step (name), step_index, attempt
step_failed = Signal()  # also: step, step_index, attempt, error, will_retry
sequence_completed = Signal()
sequence_failed = Signal()  # also: error
sequence_canceled = Signal()
sequence_paused = Signal()
sequence_resumed = Signal()
