"""The Django admin for sequences: a fast list, a read-only detail page, and actions
that go through the same transitions as the API (``sequence.engine.transitions``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from sequence.admin.actions import BUTTONS, SteeringAdmin, approval, wakeable
from sequence.admin.changelist import NameFilter, SequenceChangeList
from sequence.admin.subjects import SequenceInline
from sequence.declare.masking import mask_data, mask_text
from sequence.engine.states import Status, available
from sequence.models import NOT_MIGRATED, SequenceRecord, StepAttempt, not_migrated
from sequence.ops.health import gather, no_worker_note, summary
from sequence.present import columns, display, elements, timeline
from sequence.present.paginator import EstimatedCountPaginator

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[SequenceRecord]
else:  # not subscriptable at run time
    ModelAdmin = admin.ModelAdmin

__all__ = ["SequenceAdmin", "SequenceInline"]

MAX_ATTEMPTS = 200


@admin.register(SequenceRecord)
class SequenceAdmin(SteeringAdmin):
    list_display = (
        "id",
        "name",
        "status_badge",
        "progress_bar",
        "current_step_name",
        "attempts",
        "created",
        "updated",
        "duration",
    )
    list_display_links = ("id", "name")
    list_filter = ("status", NameFilter)
    search_fields = ("id", "key")  # see get_search_results
    search_help_text = _("Search by sequence id or start key (exact).")
    # Other orders would sort the whole table; "created" follows the id.
    sortable_by = ("id", "created")
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice, on every page load
    paginator = EstimatedCountPaginator
    actions = (
        "pause_selected",
        "resume_selected",
        "cancel_selected",
        "retry_selected",
        "edit_and_retry",
    )
    detail_template = "admin/sequence/sequencerecord/detail.html"

    class Media:
        css = {"all": ("sequence/admin.css",)}

    # -- permissions: sequences are started by code and changed only by transitions ------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting an active sequence would strand its job; retention is `sequence prune`.
        return False

    # -- the list ----------------------------------------------------------------------------

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SequenceChangeList

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list, with the health warnings and counts above it (read on every load).

        Before ``migrate``, one line saying so instead of a traceback.
        """
        try:
            health = gather(lost_jobs=False, whole_table=False)
            context = {
                "sequence_health": health,
                "sequence_health_summary": summary(health),
                # Not "Select sequence to change": nothing on this list is edited in place.
                "title": capfirst(self.opts.verbose_name_plural),
            }
            response = super().changelist_view(request, {**context, **(extra_context or {})})
            if isinstance(response, TemplateResponse):
                response.render()  # here, where a missing table can still be caught
        except DatabaseError as exc:
            if not not_migrated(exc):
                raise
            return HttpResponse(NOT_MIGRATED, content_type="text/plain", status=503)
        return response

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        # Exact matches only: each is one index lookup, however large the table.
        match = Q(key=term)
        number = term.lstrip("#")
        if number.isdigit() and int(number) < 2**63:
            match |= Q(pk=int(number))
        return queryset.filter(match), False

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, record: SequenceRecord) -> str:
        return columns.status_badge(record)

    @admin.display(description=_("progress"))
    def progress_bar(self, record: SequenceRecord) -> str:
        return columns.progress_bar(record)

    @admin.display(description=_("current step"))
    def current_step_name(self, record: SequenceRecord) -> str:
        return record.current_step or "—"

    @admin.display(description=_("attempts"))
    def attempts(self, record: SequenceRecord) -> int:
        return record.attempt

    @admin.display(description=_("created"), ordering="id")
    def created(self, record: SequenceRecord) -> str:
        return columns.when(record.created_at)

    @admin.display(description=_("updated"))
    def updated(self, record: SequenceRecord) -> str:
        return columns.when(record.updated_at)

    @admin.display(description=_("duration"))
    def duration(self, record: SequenceRecord) -> str:
        return display.format_duration(display.duration(record))

    # -- the detail page and its actions -------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/do/<str:action>/",
                view(require_POST(self.action_view)),
                name=f"{prefix}_action",
            ),
            path(
                "<path:object_id>/send/",
                view(require_POST(self.send_view)),
                name=f"{prefix}_send",
            ),
            path(
                "<path:object_id>/retry/",
                view(self.retry_view),
                name=f"{prefix}_retry",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        record = self._get(object_id)
        if not self.has_view_or_change_permission(request, record):
            raise PermissionDenied
        recent = list(
            StepAttempt.objects.filter(sequence_id=record.pk).order_by("-id")[:MAX_ATTEMPTS]
        )
        recent.reverse()
        total_attempts = len(recent)
        if total_attempts == MAX_ATTEMPTS:
            total_attempts = StepAttempt.objects.filter(sequence_id=record.pk).count()
        can_change = self.has_change_permission(request, record)
        fans = {fan.step_index: fan for fan in elements.of(record)}
        actions = [
            {
                "name": action,
                "label": BUTTONS[action],
                "url": self._url("action", record.pk, action=action),
            }
            for action in [*available(record.status), *wakeable(record)]
            if can_change
        ]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{record.name} #{record.pk}",
            "subtitle": None,
            "record": record,
            "status_label": Status(record.status).label,
            # Each step of the plan with its ForEach's elements (None for other steps).
            "plan_rows": [(step, fans.get(step.index)) for step in display.plan_steps(record)],
            "fans": list(fans.values()),
            "done": record.steps_done,
            "total": record.total_steps,
            "percent": record.progress.percent,
            "duration": display.format_duration(display.duration(record)),
            "data_json": json.dumps(
                mask_data(record.data), indent=2, ensure_ascii=False, sort_keys=True
            ),
            "error": mask_text(record.error, record.data),
            "waiting": display.waiting_text(record),
            "no_worker": no_worker_note(record),
            "events": [display.event_detail(e) for e in record.events.order_by("id")[:100]],
            "attempts": [
                {
                    "attempt": a,
                    "error": mask_text(a.error, record.data),
                    "traceback": mask_text(a.traceback, record.data),
                    "took": display.format_duration(a.duration),
                    "changes": display.change_lines(a.changes),
                }
                for a in recent
            ],
            "total_attempts": total_attempts,
            "timeline": timeline.build(record, recent),
            "actions": actions,
            "can_change": can_change,
            "approval": approval(record) if can_change else None,
            "send_url": self._url("send", record.pk),
            "retry_url": self._url("retry", record.pk)
            if can_change and "retry" in available(record.status)
            else "",
            "has_view_permission": True,
            "subject": columns.subject_link(record, self.admin_site),
            "breadcrumbs": columns.breadcrumbs(self._crumbs(), f"{record.name} #{record.pk}"),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.detail_template, context)
