"""``SequenceInline``: the sequences of one of your objects on its own admin page.

Put it in your ``ModelAdmin``'s ``inlines``; it is public as ``sequence.admin.SequenceInline``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.contenttypes.admin import GenericTabularInline
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from sequence.admin.changelist import LIST_FIELDS
from sequence.models import SequenceRecord
from sequence.present import columns


class SequenceInline(GenericTabularInline):
    """The sequences of one of your own models, on its admin page (read-only).

    Put it in your ``ModelAdmin``'s ``inlines``; it lists the sequences started with
    ``subject=`` that object, newest first, each linking to its own page.
    """

    model = SequenceRecord
    ct_field = "subject_type"
    ct_fk_field = "subject_id"
    fields = readonly_fields = ("sequence", "status_badge", "progress_bar", "step", "created")
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name = _("sequence")
    verbose_name_plural = _("sequences")
    classes = ("seq-inline",)

    class Media:
        css = {"all": ("sequence/admin.css",)}

    def get_queryset(self, request: HttpRequest) -> QuerySet[SequenceRecord]:
        return super().get_queryset(request).only(*LIST_FIELDS).order_by("-id")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("sequence"))
    def sequence(self, record: SequenceRecord) -> str:
        url = reverse(
            f"admin:{record._meta.app_label}_{record._meta.model_name}_change",
            args=[record.pk],
            current_app=self.admin_site.name,
        )
        return format_html('<a href="{}">{} #{}</a>', url, record.name, record.pk)

    @admin.display(description=_("status"))
    def status_badge(self, record: SequenceRecord) -> str:
        return columns.status_badge(record)

    @admin.display(description=_("progress"))
    def progress_bar(self, record: SequenceRecord) -> str:
        return columns.progress_bar(record)

    @admin.display(description=_("current step"))
    def step(self, record: SequenceRecord) -> str:
        return record.current_step or "—"

    @admin.display(description=_("created"))
    def created(self, record: SequenceRecord) -> str:
        return columns.when(record.created_at)
