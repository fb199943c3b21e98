"""The Django admin for sequences (``site``), the parts of its change list
(``changelist``) and ``SequenceInline`` for your own models' pages (``subjects``)."""

from __future__ import annotations

from sequence.admin.site import SequenceAdmin
from sequence.admin.subjects import SequenceInline

__all__ = ["SequenceAdmin", "SequenceInline"]
