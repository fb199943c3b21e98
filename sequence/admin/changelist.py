"""The admin's list parts: the name filter, the change list that reads only the list's
fields, and the retry form."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from sequence.declare.masking import MASK
from sequence.declare.registry import registered
from sequence.models import SequenceRecord

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[SequenceRecord]
else:  # not subscriptable at run time
    ModelAdmin = admin.ModelAdmin

# Columns the list needs: never the data or the error, which may be large.
# Columns the list needs: never the data or the error, which may be large.
LIST_FIELDS = (
    "id",
    "name",
    "status",
    "plan",
    "step_index",
    "items_total",  # a running ForEach's elements, in the progress bar
    "items_done",
    "attempt",
    "created_at",
    "updated_at",
    "finished_at",
)


# Attempts shown on a detail page, the newest; older ones are counted, not drawn.
class NameFilter(admin.SimpleListFilter):
    """Filter by sequence name, offering the registered names (no query to list them)."""

    title = _("name")
    parameter_name = "name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in sorted(registered())]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(name=value) if value else queryset


class SequenceChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        return super().get_queryset(request, exclude_parameters).only(*LIST_FIELDS)


class RetryForm(forms.Form):
    sequence_data = forms.CharField(
        label=_("Data"),
        widget=forms.Textarea(attrs={"rows": 18, "cols": 80, "class": "seq-json-input"}),
        help_text=_(
            "The data the failed step runs with, as a JSON object. Values shown as %(mask)s "
            "are secrets: leave them as they are to keep the stored value."
        )
        % {"mask": MASK},
    )
    epoch = forms.IntegerField(widget=forms.HiddenInput)
    from_step = forms.ChoiceField(
        label=_("Carry on from"),
        required=False,
        help_text=_(
            "The failed step of the stored plan, or a step of the sequence's current plan: "
            "the sequence then moves onto the current plan and version (the way back after "
            "a deploy removed a step)."
        ),
    )
    force = forms.BooleanField(
        label=_("Retry although its compensations ran"),
        required=False,
        help_text=_("Its steps' work was undone; running them again may act on undone work."),
    )

    def __init__(self, *args: Any, plan: list[str] = (), **kwargs: Any) -> None:  # type: ignore[assignment]
        super().__init__(*args, **kwargs)
        choices = [("", _("the failed step, on the stored plan"))] + [(n, n) for n in plan]
        self.fields["from_step"].choices = choices  # type: ignore[attr-defined]

    def clean_sequence_data(self) -> dict[str, Any]:
        text = self.cleaned_data["sequence_data"]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                _("This is not valid JSON: %(error)s (line %(line)s, column %(column)s)."),
                params={"error": exc.msg, "line": exc.lineno, "column": exc.colno},
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError(
                _("Give a JSON object ({...}), not %(type)s."),
                params={"type": type(value).__name__},
            )
        return value
