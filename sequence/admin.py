"""The Django admin for sequences: a fast list, a read-only detail page, and actions
that go through the same transitions as the API (``sequence.transitions``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_POST

from sequence import columns, display, elements, steering, timeline
from sequence.admin_list import NameFilter, RetryForm, SequenceChangeList
from sequence.exceptions import InvalidData, InvalidTransition, UnknownSequence
from sequence.health import gather, no_worker_note, summary
from sequence.masking import mask_data, mask_text, unmask_data
from sequence.models import NOT_MIGRATED, SequenceRecord, StepAttempt, not_migrated
from sequence.paginator import EstimatedCountPaginator
from sequence.registry import registered
from sequence.states import REQUESTS, Status, available
from sequence.subject_admin import SequenceInline

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[SequenceRecord]
else:  # not subscriptable at run time
    ModelAdmin = admin.ModelAdmin

__all__ = ["SequenceAdmin", "SequenceInline"]

MAX_ATTEMPTS = 200
# Sequences one list action may change; more belong to `manage.py sequence`.
MAX_SELECTED = 1000

DONE = {
    "pause": _("Paused"),
    "resume": _("Resumed"),
    "cancel": _("Canceled"),
    "retry": _("Retried"),
    "wake": _("Woke"),
}
BUTTONS = {
    "pause": _("Pause"),
    "resume": _("Resume"),
    "cancel": _("Cancel"),
    "retry": _("Retry"),
    "wake": _("Wake now"),
}


@admin.register(SequenceRecord)
class SequenceAdmin(ModelAdmin):
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
    retry_template = "admin/sequence/sequencerecord/retry.html"

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

    # -- list actions ----------------------------------------------------------------------

    def _bulk(self, request: HttpRequest, queryset: QuerySet[Any], action: str) -> None:
        ids = list(queryset.order_by("id").values_list("pk", flat=True)[: MAX_SELECTED + 1])
        if len(ids) > MAX_SELECTED:
            self.message_user(
                request,
                _(
                    "Select at most %(max)d sequences at once; for more, use "
                    "`manage.py sequence %(action)s ID...`."
                )
                % {"max": MAX_SELECTED, "action": action},
                messages.ERROR,
            )
            return
        changed, unchanged, refused = [], [], []
        for pk in ids:
            before = queryset.model.objects.filter(pk=pk).values_list("status", flat=True).first()
            try:
                record = steering.ACTIONS[action](pk)
            except (InvalidTransition, UnknownSequence, InvalidData) as exc:
                refused.append(str(exc))
                continue
            if record.status != before or action == "retry":
                changed.append(record)
                self.log_change(request, record, str(DONE[action]))
            else:
                unchanged.append(record)
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(done)s %(count)d sequence: %(ids)s.",
                    "%(done)s %(count)d sequences: %(ids)s.",
                    len(changed),
                )
                % {"done": DONE[action], "count": len(changed), "ids": _ids(changed)},
                messages.SUCCESS,
            )
        if unchanged:
            self.message_user(
                request,
                _("Already %(status)s, left unchanged: %(ids)s.")
                % {"status": unchanged[0].status, "ids": _ids(unchanged)},
                messages.INFO,
            )
        for reason in refused[:10]:
            self.message_user(request, reason, messages.ERROR)
        if len(refused) > 10:
            self.message_user(
                request, _("…and %(n)d more refused.") % {"n": len(refused) - 10}, messages.ERROR
            )

    @admin.action(description=_("Pause selected sequences"), permissions=["change"])
    def pause_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, "pause")

    @admin.action(description=_("Resume selected sequences"), permissions=["change"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, "resume")

    @admin.action(description=_("Cancel selected sequences"), permissions=["change"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, "cancel")

    @admin.action(description=_("Retry selected failed sequences"), permissions=["change"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        self._bulk(request, queryset, "retry")

    @admin.action(description=_("Retry with edited data (one sequence)"), permissions=["change"])
    def edit_and_retry(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        ids = list(queryset.values_list("pk", flat=True)[:2])
        if len(ids) != 1:
            self.message_user(
                request, _("Select exactly one sequence to retry with edited data."), messages.ERROR
            )
            return None
        return HttpResponseRedirect(self._url("retry", ids[0]))

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
                "<path:object_id>/retry/",
                view(self.retry_view),
                name=f"{prefix}_retry",
            ),
            *super().get_urls(),
        ]

    def _url(self, view: str, pk: Any, **kwargs: Any) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_{view}"
        return reverse(name, args=[pk, *kwargs.values()], current_app=self.admin_site.name)

    def _crumbs(self) -> list[tuple[str, str]]:
        """Home, the app and the list: the breadcrumbs above a sequence's pages."""
        site = self.admin_site.name
        return [
            (reverse("admin:index", current_app=site), str(_("Home"))),
            (
                reverse(
                    "admin:app_list", kwargs={"app_label": self.opts.app_label}, current_app=site
                ),
                str(self.opts.app_config.verbose_name),
            ),
            (self._url_list(), str(capfirst(self.opts.verbose_name_plural))),
        ]

    def _url_list(self) -> str:
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist"
        return reverse(name, current_app=self.admin_site.name)

    def _get(self, object_id: str) -> SequenceRecord:
        if not object_id.isdigit():
            raise Http404(f"No sequence has the id {object_id!r}.")
        return get_object_or_404(SequenceRecord, pk=int(object_id))

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
            for action in [*available(record.status), *_wakeable(record)]
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
                }
                for a in recent
            ],
            "total_attempts": total_attempts,
            "timeline": timeline.build(record, recent),
            "actions": actions,
            "can_change": can_change,
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

    def action_view(self, request: HttpRequest, object_id: str, action: str) -> HttpResponse:
        record = self._get(object_id)
        if action not in (*REQUESTS, "wake"):
            raise PermissionDenied
        if not self.has_change_permission(request, record):
            raise PermissionDenied
        before = record.status
        try:
            record = steering.ACTIONS[action](record.pk)
        except (InvalidTransition, UnknownSequence, InvalidData) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            if record.status != before or action == "retry":
                self.log_change(request, record, str(DONE[action]))
                self.message_user(
                    request,
                    _("%(done)s %(name)s #%(id)s: it is now %(status)s.")
                    % {
                        "done": DONE[action],
                        "name": record.name,
                        "id": record.pk,
                        "status": record.status,
                    },
                    messages.SUCCESS,
                )
            else:
                self.message_user(
                    request,
                    _("%(name)s #%(id)s is already %(status)s; nothing changed.")
                    % {"name": record.name, "id": record.pk, "status": record.status},
                    messages.INFO,
                )
        return HttpResponseRedirect(self._url("change", record.pk))

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        record = self._get(object_id)
        if not self.has_change_permission(request, record):
            raise PermissionDenied
        detail_url = self._url("change", record.pk)
        if record.status != Status.FAILED:
            self.message_user(
                request,
                _("%(name)s #%(id)s is %(status)s; only a failed sequence can be retried.")
                % {"name": record.name, "id": record.pk, "status": record.status},
                messages.ERROR,
            )
            return HttpResponseRedirect(detail_url)
        cls = registered().get(record.name)
        plan = cls.plan_names() if cls is not None else []
        if request.method == "POST":
            form = RetryForm(request.POST, plan=plan)
            if form.is_valid():
                edited = unmask_data(form.cleaned_data["sequence_data"], record.data)
                try:
                    record = steering.retry(
                        record.pk, edited, replace=True, epoch=form.cleaned_data["epoch"],
                        from_step=form.cleaned_data["from_step"] or None,
                        force=form.cleaned_data["force"],
                    )  # fmt: skip
                except (InvalidTransition, InvalidData) as exc:
                    form.add_error(None, str(exc))
                else:
                    self.log_change(request, record, "Retried with edited data")
                    self.message_user(
                        request,
                        _("Retried %(name)s #%(id)s with the edited data: it is now %(status)s.")
                        % {"name": record.name, "id": record.pk, "status": record.status},
                        messages.SUCCESS,
                    )
                    return HttpResponseRedirect(detail_url)
        else:
            form = RetryForm(
                plan=plan,
                initial={
                    "sequence_data": json.dumps(
                        mask_data(record.data), indent=2, ensure_ascii=False, sort_keys=True
                    ),
                    "epoch": record.epoch,
                },
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Retry %(name)s #%(id)s with edited data")
            % {"name": record.name, "id": record.pk},
            "record": record,
            "form": form,
            "error": mask_text(record.error, record.data),
            "detail_url": detail_url,
            "failed_step": record.current_step,
            "compensated": record.compensated,
            "breadcrumbs": columns.breadcrumbs(
                [*self._crumbs(), (detail_url, f"{record.name} #{record.pk}")],
                str(_("Retry with edited data")),
            ),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.retry_template, context)


def _wakeable(record: SequenceRecord) -> list[str]:
    return ["wake"] if record.status == Status.SLEEPING else []


def _ids(records: list[SequenceRecord]) -> str:
    shown = ", ".join(f"#{r.pk}" for r in records[:20])
    return shown + (f" and {len(records) - 20} more" if len(records) > 20 else "")
