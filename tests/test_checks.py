"""System checks name the misconfiguration and its fix."""

from __future__ import annotations

import pytest
from django.test import override_settings

from sequence.ops import checks


def ids(messages):
    return [m.id for m in messages]


def test_missing_django_rq_is_an_error(settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "django_rq"]
    assert ids(checks.check_django_rq()) == ["sequence.E001"]


def test_a_queue_missing_from_rq_queues_is_an_error(settings):
    settings.RQ_QUEUES = {"high": settings.RQ_QUEUES["high"]}
    messages = checks.check_queues()
    assert ids(messages) == ["sequence.E002"]
    assert "'default'" in messages[0].msg


def test_a_pickle_serializer_is_an_error(settings):
    settings.RQ_QUEUES = {
        **settings.RQ_QUEUES,
        "default": {"URL": "redis://x", "SERIALIZER": "rq.serializers.DefaultSerializer"},
    }
    messages = checks.check_serializer()
    assert ids(messages) == ["sequence.E003"]
    assert "JSONSerializer" in messages[0].hint


def test_a_queue_without_a_serializer_is_a_warning_naming_the_json_one(settings):
    settings.RQ_QUEUES = {**settings.RQ_QUEUES, "default": {"URL": "redis://x"}}
    messages = checks.check_serializer()
    assert ids(messages) == ["sequence.W002"]
    assert "'default'" in messages[0].msg
    assert '"SERIALIZER": "rq.serializers.JSONSerializer"' in messages[0].hint
    assert "manage.py sequence worker" in messages[0].hint


def test_the_test_project_passes_every_check():
    assert checks.check_django_rq() == []
    assert checks.check_queues() == []
    assert checks.check_serializer() == []


# -- every SEQUENCE_* setting, typed once and checked (sequence.E004, W003) -------------------


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("SEQUENCE_TIMEOUT", "300", "a whole number of seconds"),
        ("SEQUENCE_TIMEOUT", True, "a whole number of seconds"),
        ("SEQUENCE_INLINE_SECONDS", "1", "a number of seconds"),
        ("SEQUENCE_MAX_ITEMS", -1, "cannot be negative"),
        ("SEQUENCE_HISTORY_CHANGE_LIMIT", "8 KiB", "a whole number of bytes"),
        ("SEQUENCE_HISTORY_CHANGE_LIMIT", -1, "cannot be negative"),
        ("SEQUENCE_QUEUE", 3, "a string"),
        ("SEQUENCE_TESTING", "yes", "True or False"),
        ("SEQUENCE_ALLOWED_JOBS", "shop.tasks.send", "a list of dotted paths"),
        ("SEQUENCE_TEST_POINTS", ["crash"], "a dict or None"),
        ("SEQUENCE_RETRY", {"max": -1}, "max must be 0 or more"),
        ("SEQUENCE_RETRY", {"tries": 3}, "not a Retry"),
    ],
)
def test_a_setting_of_the_wrong_type_or_range_is_an_error_naming_it(setting, value, says):
    with override_settings(**{setting: value}):
        found = [m for m in checks.check_settings() if m.id == "sequence.E004"]
    assert len(found) == 1, found
    assert found[0].msg.startswith(f"{setting} = {value!r}")
    assert says in found[0].msg
    assert "remove it for the default" in found[0].hint


def test_every_default_passes_its_own_check():
    assert checks.check_settings() == []


def test_a_misspelt_setting_is_a_warning_that_names_the_setting_it_may_mean():
    with override_settings(SEQUENCE_RETRYS=2):
        found = checks.check_settings()
    assert [(m.id, m.hint) for m in found] == [("sequence.W003", "Did you mean SEQUENCE_RETRY?")]
