"""The configuration the guarantees depend on, checked by system checks."""

from __future__ import annotations

import pytest
from django.core import checks as django_checks

from sequence.ops import checks

from ..conftest import wait_for


def ids(messages):
    return [m.id for m in messages]


def test_a_lease_margin_within_rqs_hard_kill_margin_is_an_error(settings):
    settings.SEQUENCE_LEASE_MARGIN = 60
    messages = checks.check_lease()
    assert ids(messages) == ["sequence.E101"]
    assert "more than 60" in messages[0].hint
    settings.SEQUENCE_LEASE_MARGIN = 90
    assert checks.check_lease() == []


def test_a_worker_taken_for_dead_after_one_missed_beat_is_an_error(settings):
    settings.SEQUENCE_WORKER_HEARTBEAT, settings.SEQUENCE_WORKER_DEAD_AFTER = 10, 15
    assert ids(checks.check_liveness()) == ["sequence.E102"]
    settings.SEQUENCE_WORKER_HEARTBEAT = 0  # no beats: nothing to get wrong
    assert checks.check_liveness() == []
    settings.SEQUENCE_WORKER_HEARTBEAT, settings.SEQUENCE_WORKER_DEAD_AFTER = 5, 30
    assert checks.check_liveness() == []


def test_inline_steps_need_a_count_and_a_short_time_budget(settings):
    assert checks.check_inline() == []  # off by default
    settings.SEQUENCE_INLINE_STEPS, settings.SEQUENCE_INLINE_SECONDS = 8, 2
    assert checks.check_inline() == []
    settings.SEQUENCE_INLINE_SECONDS = 120
    assert ids(checks.check_inline()) == ["sequence.E103"]
    settings.SEQUENCE_INLINE_STEPS, settings.SEQUENCE_INLINE_SECONDS = -1, 1
    assert ids(checks.check_inline()) == ["sequence.E103"]


def test_the_redis_check_is_a_deploy_check():
    registered = django_checks.registry.registry.get_checks(include_deployment_checks=True)
    assert checks.check_redis_policy in registered
    assert checks.check_redis_policy not in django_checks.registry.registry.get_checks()


@pytest.mark.django_db(transaction=True)
def test_an_evicting_redis_is_a_warning_and_workers_say_so(private_redis, fleet):
    server = private_redis()
    assert checks.check_redis_policy() == []
    from redis import Redis

    Redis.from_url(server.url).config_set("maxmemory-policy", "allkeys-lru")
    messages = checks.check_redis_policy()
    assert ids(messages) == ["sequence.W101"]
    assert "'allkeys-lru'" in messages[0].msg
    fleet.start(env={"REDIS_URL": server.url})
    wait_for(lambda: "sequence.W101" in fleet.output(), timeout=30)


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_redis_is_reported_not_raised(private_redis):
    server = private_redis()
    server.kill()
    assert ids(checks.check_redis_policy()) == ["sequence.I101"]
