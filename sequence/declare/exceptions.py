"""Every error the library raises derives from :class:`SequenceError`."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured


class SequenceError(Exception):
    """Base class of every error raised by ``sequence``."""


class ConfigurationError(SequenceError, ImproperlyConfigured):
    """Raised when a sequence or the settings are declared wrongly."""


class InvalidData(SequenceError, ValueError):
    """Raised when data cannot be stored: not a JSON object, too large, or rejected."""


class UnknownSequence(SequenceError, LookupError):
    """Raised when no registered sequence has the given name or id."""


class InvalidTransition(SequenceError):
    """Raised when a sequence cannot move from its status to the one asked for."""


class Fail(SequenceError):
    """Raised by a step to fail it for good at once, whatever retries it has left.

    Its message becomes the sequence's ``error``; compensations run as after any failure.
    """


class SequenceFailed(SequenceError):
    """Raised by ``wait()`` when the sequence ended ``failed``."""


class SequenceCanceled(SequenceError):
    """Raised by ``wait()`` when the sequence was canceled."""


class SequenceTimeout(SequenceError, TimeoutError):
    """Raised by ``wait()`` when the sequence did not finish in time."""


class ForeignJob(SequenceError):
    """Raised when a worker is handed a job that is not a sequence step."""


class UnreadableJob(SequenceError):
    """Raised when a worker cannot read a step job: it does not read JSON payloads."""


class StepFenced(SequenceError):
    """Raised when a step no longer holds its sequence: taken over, paused or canceled."""


class StepDeadlineExceeded(SequenceError):
    """Raised when a step finished after its timeout; its result is not committed."""


class SequenceBusy(SequenceError):
    """Raised by ``start`` when the sequence's ``Concurrency`` key has no free place and
    its ``on_busy`` is ``"reject"``; nothing was saved."""
