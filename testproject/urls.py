from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from testproject.testapp.webhooks import activation_webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("sequence/", include("sequence.ops.urls")),
    path("hooks/activated/", activation_webhook),
]
