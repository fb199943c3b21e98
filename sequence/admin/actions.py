"""What the admin changes: the list's actions on selected sequences, and the buttons and
the edit-and-retry form of a sequence's page, each through the same steering requests
as the API (``sequence.engine.steering``)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from sequence.admin.changelist import RetryForm
from sequence.declare.exceptions import InvalidData, InvalidTransition, UnknownSequence
from sequence.declare.masking import mask_data, mask_text, unmask_data
from sequence.declare.registry import registered
from sequence.engine import steering, waiting
from sequence.engine.states import REQUESTS, Status, sources
from sequence.models import SequenceEvent, SequenceRecord
from sequence.present import columns

if TYPE_CHECKING:
    ModelAdmin = admin.ModelAdmin[SequenceRecord]
else:  # not subscriptable at run time
    ModelAdmin = admin.ModelAdmin

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


class SteeringAdmin(ModelAdmin):
    """The admin's actions on sequences; ``SequenceAdmin`` adds the list and the pages."""

    retry_template = "admin/sequence/sequencerecord/retry.html"

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
        if record.status not in sources("retry"):
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

    def send_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The approval form's POST: send the awaited event with its JSON data, as
        ``seq.send(event, data, id=...)`` does; the form's event id makes a second
        submission of the same form change nothing."""
        record = self._get(object_id)
        if not self.has_change_permission(request, record):
            raise PermissionDenied
        detail_url = self._url("change", record.pk)
        event = request.POST.get("event", "").strip()
        event_id = request.POST.get("event_id", "").strip()[:200] or None
        refusal: str | None = None
        if (
            event_id
            and SequenceEvent.objects.filter(sequence_id=record.pk, event_id=event_id).exists()
        ):
            self.message_user(
                request, _("This form was sent already; nothing changed."), messages.INFO
            )
            return HttpResponseRedirect(detail_url)
        try:
            data = json.loads(request.POST.get("data", "").strip() or "{}")
        except json.JSONDecodeError as exc:
            refusal = str(_("The data is not JSON (%(error)s); nothing was sent.")) % {"error": exc}
        else:
            if record.status != Status.WAITING:
                refusal = str(
                    _("%(name)s #%(id)s is %(status)s, no longer waiting; nothing was sent.")
                ) % {"name": record.name, "id": record.pk, "status": record.status}
            else:
                try:
                    waiting.send(record.pk, event, data, id=event_id)
                except (InvalidData, InvalidTransition) as exc:
                    refusal = str(exc)
        if refusal is not None:
            self.message_user(request, refusal, messages.ERROR)
        else:
            self.log_change(request, record, f"Sent event {event}")
            record.refresh_from_db()
            self.message_user(
                request,
                _("Sent %(event)s to %(name)s #%(id)s: it is now %(status)s.")
                % {"event": event, "name": record.name, "id": record.pk, "status": record.status},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(detail_url)


def approval(record: SequenceRecord) -> dict[str, str] | None:
    """The approval form of a waiting sequence: the awaited event, and a fresh event id."""
    if record.status != Status.WAITING:
        return None
    return {"event": record.waiting_for, "event_id": f"admin-{uuid.uuid4().hex}"}


def wakeable(record: SequenceRecord) -> list[str]:
    return ["wake"] if record.status in sources("wake_now") else []


def _ids(records: list[SequenceRecord]) -> str:
    shown = ", ".join(f"#{r.pk}" for r in records[:20])
    return shown + (f" and {len(records) - 20} more" if len(records) > 20 else "")
