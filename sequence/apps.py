from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SequenceConfig(AppConfig):
    name = "sequence"
    label = "sequence"
    verbose_name = _("Sequences")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from sequence.engine import steering  # noqa: F401

        # steering puts the verbs of SequenceRecord's queryset in place (see models.VERBS).
        from sequence.ops import checks

        checks.register()
        autodiscover_modules("sequences")
