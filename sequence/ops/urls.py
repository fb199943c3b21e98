"""URLs to ``include()``: ``path("sequence/", include("sequence.ops.urls"))`` serves /sequence/metrics."""

from __future__ import annotations

from django.urls import path

from sequence.ops.metrics import metrics_view

app_name = "sequence"

urlpatterns = [
    path("metrics", metrics_view, name="metrics"),
]
