from __future__ import annotations

from django.contrib import admin

from sequence.admin import SequenceInline
from testproject.testapp.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    inlines = [SequenceInline]
