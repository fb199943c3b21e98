"""System checks name the misconfiguration and its fix."""

from __future__ import annotations

from sequence import checks


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
