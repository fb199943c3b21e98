"""Declaring sequences: names, the registry, plans, schemas and versions."""

from __future__ import annotations

import pytest

from sequence import ConfigurationError, ForEach, InvalidData, Retry, Sequence, SequenceFailed, Step
from sequence.declare.registry import get_sequence_class, registered
from sequence.models import SequenceRecord
from testproject.testapp.sequences import A, Checkout, Signup, ThreeSteps, Versioned

from .conftest import wait_for


def test_every_apps_sequences_module_is_registered_under_app_label_and_class_name():
    assert get_sequence_class("testapp.ThreeSteps") is ThreeSteps
    assert get_sequence_class("demo.ContactFormSequence").__name__ == "ContactFormSequence"
    assert "testapp.Inner" in registered()


def test_two_sequences_with_one_name_are_a_configuration_error():
    with pytest.raises(ConfigurationError, match=r"Two sequences are named 'testapp\.ThreeSteps'"):
        type("Impostor", (Sequence,), {"steps": [A], "name": "testapp.ThreeSteps"})


def test_a_name_can_be_given():
    cls = type(
        "Renamed", (Sequence,), {"steps": [A], "name": "billing.renamed", "__module__": __name__}
    )
    assert get_sequence_class("billing.renamed") is cls


def test_a_step_must_be_a_step_a_function_or_a_sequence():
    with pytest.raises(ConfigurationError, match="must be a Step subclass"):
        type("Bad", (Sequence,), {"steps": [42]})


def test_two_different_steps_with_one_name_are_refused():
    other_a = type("A", (Step,), {"perform": lambda self: None})
    with pytest.raises(ConfigurationError, match="two different steps named 'A'"):
        type("Clash", (Sequence,), {"steps": [A, other_a]})


def test_schedule_names_are_unique_within_a_sequence():
    from sequence import Schedule

    with pytest.raises(ConfigurationError, match="two schedules with one name"):
        type(
            "Twice",
            (Sequence,),
            {
                "steps": [A],
                "schedules": [Schedule("x", cron="* * * * *"), Schedule("x", cron="0 * * * *")],
            },
        )


def test_retry_options_are_validated():
    with pytest.raises(ConfigurationError, match="max must be 0 or more"):
        Retry(max=-1)
    with pytest.raises(ConfigurationError, match="interval"):
        Retry(max=2, interval=[-1])
    # Waits that grow past a year (or past a float's range) need a cap.
    with pytest.raises(ConfigurationError, match="over a year: cap the waits with max_interval"):
        Retry(max=1100, interval=1, backoff=2.0)
    capped = Retry(max=1100, interval=1, backoff=2.0, max_interval=600)
    assert capped.delays()[:3] == [1, 2, 4]
    assert capped.delays()[-1] == 600


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry": "x"}, r"Odd\.retry = 'x': give a Retry"),
        ({"retry": True}, r"Odd\.retry = True: give a Retry"),
        ({"retry": {"max": 2, "interval": -5}}, r"Odd\.retry = .*Retry\(interval=-5\)"),
        ({"retry": {"maxx": 1}}, r"Odd\.retry = .*unexpected keyword argument 'maxx'"),
        ({"timeout": "soon"}, r"Odd\.timeout = 'soon': give whole seconds > 0"),
        ({"timeout": 0}, r"Odd\.timeout = 0: give whole seconds > 0"),
        ({"queue": ""}, r"Odd\.queue = '': give the name of a queue"),
        ({"atomic": "yes"}, r"Odd\.atomic = 'yes': give True or False"),
    ],
)
def test_a_steps_options_are_refused_when_its_class_is_defined(options, message):
    with pytest.raises(ConfigurationError, match=message):
        type("Odd", (Step,), {"perform": lambda self: None, **options})


def test_a_steps_options_in_their_other_forms_are_accepted():
    for options, retries in (
        ({"retry": 3}, 3),
        ({"retry": {"max": 2, "interval": 1}}, 2),
        ({"retry": Retry(max=1)}, 1),
    ):
        fine = type("Fine", (Step,), {"timeout": 5, "queue": "high", "atomic": True, **options})
        assert Retry.coerce(fine.retry).max == retries
        assert (fine.timeout, fine.queue, fine.atomic) == (5, "high", True)


def test_a_schema_must_be_a_model_or_a_callable():
    with pytest.raises(ConfigurationError, match=r"Schemaless\.schema = 5: give a pydantic model"):
        type("Schemaless", (Sequence,), {"steps": [A], "schema": 5})


@pytest.mark.django_db(transaction=True)
def test_a_schema_that_returns_no_dict_is_named_in_the_error():
    cls = type("Forgetful", (Sequence,), {"steps": [A], "schema": lambda data: None})
    with pytest.raises(InvalidData, match="the schema returned NoneType None; it must return"):
        cls.start({})
    assert not SequenceRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_callable_schema_cleans_the_data():
    seq = Signup.start({"email": "Ada@Example.COM", "extra": 1})
    assert seq.data == {"email": "ada@example.com"}


@pytest.mark.django_db(transaction=True)
def test_a_rejected_schema_fails_at_once_and_saves_nothing():
    with pytest.raises(InvalidData, match="not an address"):
        Signup.start({"email": "nope"})
    assert not SequenceRecord.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_pydantic_schema_validates_and_serialises():
    seq = Checkout.start({"order_id": "7"})
    assert seq.data == {"order_id": 7, "amount": 0.0}
    with pytest.raises(InvalidData, match="order_id"):
        Checkout.start({"amount": 1})


@pytest.mark.django_db(transaction=True)
def test_a_sequence_records_its_version_and_plan():
    seq = Versioned.start({})
    record = SequenceRecord.objects.get(pk=seq.id)
    assert (record.version, record.plan) == ("2", ["A", "B"])
    assert Versioned.get(seq.id).version == "2"


@pytest.mark.django_db(transaction=True)
def test_a_running_sequence_follows_its_stored_plan_after_a_deploy(workers):
    seq = Versioned.start({})
    # As if started by an older deploy whose plan ran B before A.
    SequenceRecord.objects.filter(pk=seq.id).update(plan=["B", "A"], version="1")
    workers.start()
    assert seq.wait(30)["trail"] == ["B", "A"]


@pytest.mark.django_db(transaction=True)
def test_a_stored_step_that_no_longer_exists_fails_the_sequence_clearly(workers):
    seq = Versioned.start({})
    SequenceRecord.objects.filter(pk=seq.id).update(plan=["Retired", "B"], version="1")
    workers.start()
    with pytest.raises(
        SequenceFailed,
        match=r"Step 'Retired' of testapp\.Versioned \(version '1'\) no longer exists",
    ):
        seq.wait(30)
    wait_for(
        lambda: not SequenceRecord.objects.filter(pk=seq.id, claim_token__isnull=False).exists()
    )


def test_retry_and_foreach_take_their_options_by_keyword_as_the_contract_writes_them():
    # Retry(max, interval=0, *, backoff, ...) and ForEach(key, step, *, concurrency, into).
    assert Retry(3, 2, backoff=2.0).max == 3
    with pytest.raises(TypeError):
        Retry(3, 2, 2.0)  # type: ignore[misc]
    assert ForEach("ids", A, concurrency=2, into="out").concurrency == 2
    with pytest.raises(TypeError):
        ForEach("ids", A, 2)  # type: ignore[misc]
