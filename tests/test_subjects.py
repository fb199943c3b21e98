"""Sequences tied to the user's own models: start(subject=...), for_subject, the inline
on the subject's admin page, the link back, and `sequence list --subject`."""

from __future__ import annotations

import json

import django
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from sequence import InvalidData, Sequence
from sequence.models import SequenceRecord
from testproject.testapp.models import Order
from testproject.testapp.sequences import Arithmetic, ThreeSteps

from .lifecycle_support import make_user, run_jobs
from .test_command import in_shell, sequence


@pytest.mark.django_db
def test_for_subject_returns_the_subjects_sequences_newest_first_in_one_query():
    order, other = Order.objects.create(number="42"), Order.objects.create(number="43")
    first = ThreeSteps.start({}, subject=order)
    second = ThreeSteps.start({}, subject=order)
    arithmetic = Arithmetic.start({"n": 1}, subject=order)
    ThreeSteps.start({}, subject=other)
    ThreeSteps.start({})

    with CaptureQueriesContext(connection) as queries:
        mine = ThreeSteps.for_subject(order)
    assert [s.id for s in mine] == [second.id, first.id]
    assert all(isinstance(s, ThreeSteps) for s in mine)
    assert len(queries) == 1  # the content type is cached since the start
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + queries[0]["sql"])
            plan = " ".join(str(row) for row in cursor.fetchall())
        assert "sequence_subject_idx" in plan

    with CaptureQueriesContext(connection) as queries:
        every = Sequence.for_subject(order)
    assert [s.id for s in every] == [arithmetic.id, second.id, first.id]
    assert isinstance(every[0], Arithmetic)
    assert len(queries) == 1


@pytest.mark.django_db
def test_an_unsaved_subject_is_invalid_data_and_nothing_is_saved():
    with pytest.raises(InvalidData, match="not saved"):
        ThreeSteps.start({}, subject=Order(number="1"))
    with pytest.raises(InvalidData, match="saved model instance"):
        ThreeSteps.start({}, subject="order 1")  # type: ignore[arg-type]
    assert not SequenceRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_deleting_the_subject_keeps_its_sequences_and_their_history():
    order = Order.objects.create(number="42")
    seq = ThreeSteps.start({}, subject=order)
    run_jobs()
    order_pk = order.pk
    order.delete()

    record = SequenceRecord.objects.get(pk=seq.id)
    assert record.status == "completed"
    assert record.attempts.count() == 3
    shown = json.loads(sequence("show", str(seq.id), "--json")[0])
    assert shown["subject"] == {
        "model": "testapp.order",
        "pk": str(order_pk),
        "text": f"testapp.order {order_pk} (deleted)",
        "exists": False,
    }


@pytest.mark.django_db
def test_show_names_the_subject_and_list_filters_by_it():
    order = Order.objects.create(number="42")
    mine = ThreeSteps.start({}, subject=order)
    ThreeSteps.start({})

    out, _ = sequence("show", str(mine.id))
    assert "subject      Order #42" in out
    listed = json.loads(sequence("list", "--subject", f"testapp.Order:{order.pk}", "--json")[0])
    assert [row["id"] for row in listed] == [mine.id]
    assert json.loads(sequence("show", str(mine.id), "--json")[0])["subject"]["exists"] is True


@pytest.mark.django_db(transaction=True)
def test_list_subject_that_is_not_app_model_pk_is_a_usage_error_saying_the_format():
    ran = in_shell("list", "--subject", "Order42")
    assert ran.returncode == 2
    assert "write app_label.Model:pk, such as shop.Order:42" in ran.stderr
    ran = in_shell("list", "--subject", "nope.Thing:1")
    assert ran.returncode == 1
    assert "No model nope.Thing is installed" in ran.stderr


@pytest.mark.django_db
def test_the_inline_lists_the_subjects_sequences_read_only_with_links(client):
    order = Order.objects.create(number="42")
    seq = ThreeSteps.start({}, subject=order)
    ThreeSteps.start({})  # not this order's
    client.force_login(make_user("ops", "view", is_superuser=True))

    page = client.get(reverse("admin:testapp_order_change", args=[order.pk]))
    text = page.content.decode()
    assert page.status_code == 200
    detail = reverse("admin:sequence_sequencerecord_change", args=[seq.id])
    assert f'<a href="{detail}">testapp.ThreeSteps #{seq.id}</a>' in text
    assert text.count("seq-badge seq-status-") == 1  # the other sequence is not listed
    assert 'class="seq-badge seq-status-pending"' in text
    assert "0/3" in text
    inline = page.context["inline_admin_formsets"][0]
    assert not inline.has_add_permission
    assert not inline.has_change_permission
    assert not inline.has_delete_permission


@pytest.mark.django_db
def test_the_sequence_page_links_back_to_its_subject_or_says_it_is_gone(client):
    order = Order.objects.create(number="42")
    seq = ThreeSteps.start({}, subject=order)
    client.force_login(make_user("ops", "view", is_superuser=True))
    page = client.get(reverse("admin:sequence_sequencerecord_change", args=[seq.id]))
    order_url = reverse("admin:testapp_order_change", args=[order.pk])
    assert f'<a href="{order_url}">Order #42</a>' in page.content.decode()

    order.delete()
    page = client.get(reverse("admin:sequence_sequencerecord_change", args=[seq.id]))
    assert "Order 1 (deleted)".replace("1", str(seq.record.subject_id)) in page.content.decode()


@pytest.mark.django_db
def test_breadcrumbs_and_title_follow_the_running_djangos_admin(client):
    seq = ThreeSteps.start({})
    SequenceRecord.objects.filter(pk=seq.id).update(status="failed")
    client.force_login(make_user("ops", "view", "change", is_superuser=True))
    own = client.get(reverse("admin:testapp_order_add")).content.decode()  # Django's own page
    for url in (
        reverse("admin:sequence_sequencerecord_change", args=[seq.id]),
        reverse("admin:sequence_sequencerecord_retry", args=[seq.id]),
    ):
        text = client.get(url).content.decode()
        # Django 6.1 draws them as a list; 5.2 and 6.0 as a div of links.
        if django.VERSION >= (6, 1):
            assert '<ol class="breadcrumbs">' in own
            assert '<ol class="breadcrumbs">' in text
            assert '<div class="breadcrumbs">' not in text
        else:
            assert '<div class="breadcrumbs">' in own
            assert '<div class="breadcrumbs">' in text
            assert "&rsaquo;" in text
    listing = client.get(reverse("admin:sequence_sequencerecord_changelist")).content.decode()
    assert "<title>Sequences |" in listing
    assert "Select sequence to change" not in listing
