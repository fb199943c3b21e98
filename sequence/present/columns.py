"""What the admin's tables show of a sequence (the list, and the inline on a subject's
page): its status badge, progress bar, times, breadcrumbs and subject."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any

from django.contrib.admin.sites import AdminSite
from django.template.loader import get_template
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

from sequence.engine.states import Status
from sequence.models import SequenceRecord
from sequence.present import display


def status_badge(record: SequenceRecord) -> SafeString:
    return format_html(
        '<span class="seq-badge seq-status-{}">{}</span>',
        record.status,
        Status(record.status).label,
    )


def progress_bar(record: SequenceRecord) -> SafeString:
    """The steps done of all; under it, for a running ForEach, its elements done of all
    (from the counts on the row: no query)."""
    progress = record.progress
    done, total, percent = progress.done, progress.total, progress.percent
    steps = _steps_bar(record.status, done, total, percent)
    if progress.items is None:
        return steps
    items_done, items_total = progress.items
    return format_html(
        '<span class="seq-meter-stack">{}<span class="seq-meter seq-meter-elements">'
        '<span class="seq-progress seq-progress-thin seq-status-{}" role="progressbar" '
        'aria-valuemin="0" aria-valuemax="{}" aria-valuenow="{}" title="{} of {} elements done">'
        '<span class="seq-progress-fill" style="width: {}%"></span></span>'
        '<span class="seq-progress-text">{}/{} elements</span></span></span>',
        steps,
        record.status,
        items_total,
        items_done,
        items_done,
        items_total,
        items_done * 100 // items_total if items_total else 100,
        items_done,
        items_total,
    )


def _steps_bar(status: str, done: int, total: int, percent: int) -> SafeString:
    return format_html(
        '<span class="seq-meter"><span class="seq-progress seq-status-{}" role="progressbar" '
        'aria-valuemin="0" aria-valuemax="{}" aria-valuenow="{}" title="{} of {} steps done">'
        '<span class="seq-progress-fill" style="width: {}%"></span></span>'
        '<span class="seq-progress-text">{}/{}</span></span>',
        status,
        total,
        done,
        done,
        total,
        percent,
        done,
        total,
    )


def when(moment: datetime | None) -> str:
    """Compact local time (the list has nine columns to fit), in full on hover."""
    if moment is None:
        return "—"
    local, today = timezone.localtime(moment), timezone.localdate()
    if local.date() == today:
        short = local.strftime("%H:%M:%S")
    elif local.year == today.year:
        short = local.strftime("%b %d %H:%M")
    else:
        short = local.strftime("%Y-%m-%d")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        local.isoformat(),
        display.local_time(moment, zone=True),
        short,
    )


@cache
def breadcrumbs_as_list() -> bool:
    """Whether the running admin draws breadcrumbs as ``<ol>`` items (Django 6) rather
    than a ``<div>`` with separators (Django 5.2): read from its own change form."""
    template = getattr(get_template("admin/change_form.html"), "template", None)
    source = getattr(template, "source", "")
    return '<ol class="breadcrumbs">' in source


def breadcrumbs(crumbs: list[tuple[str, str]], current: str) -> SafeString:
    """The admin's breadcrumbs as the running Django draws them: ``crumbs`` are links
    (url, text), ``current`` the page's own name."""
    if breadcrumbs_as_list():
        return format_html(
            '<ol class="breadcrumbs">{}<li aria-current="page">{}</li></ol>',
            format_html_join("", '<li><a href="{}">{}</a></li>', crumbs),
            current,
        )
    return format_html(
        '<div class="breadcrumbs">{}&rsaquo; {}</div>',
        format_html_join("", '<a href="{}">{}</a> &rsaquo; ', crumbs),
        current,
    )


def subject_link(record: SequenceRecord, site: AdminSite) -> SafeString | str:
    """The sequence's subject: a link to its admin page if it has one, its name if not,
    "(deleted)" if its row is gone, "" if the sequence has none."""
    if record.subject_type_id is None and not record.subject_id:
        return ""
    subject: Any = record.subject if record.subject_type_id is not None else None
    if subject is None:
        model = record.subject_type.model_class() if record.subject_type is not None else None
        name = model._meta.verbose_name if model is not None else _("subject")
        return _("%(name)s %(id)s (deleted)") % {
            "name": str(name).capitalize(),
            "id": record.subject_id,
        }
    opts = subject._meta
    try:
        url = reverse(
            f"admin:{opts.app_label}_{opts.model_name}_change",
            args=[subject.pk],
            current_app=site.name,
        )
    except NoReverseMatch:
        return str(subject)
    return format_html('<a href="{}">{}</a>', url, subject)
