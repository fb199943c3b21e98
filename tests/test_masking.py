"""Secrets: hidden in what people read (admin, command, stored errors, logs), kept in the data."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sequence import Retry, Sequence, Step
from sequence.declare.masking import (
    MASK,
    MaskSecrets,
    is_secret_key,
    mask_data,
    mask_text,
    unmask_data,
)
from sequence.models import SequenceRecord, StepAttempt

from .lifecycle_support import run_jobs


@pytest.mark.parametrize(
    "key",
    ["password", "db_password", "PASSWD", "api_key", "API-Key", "apiKey", "api key", "token",
     "accessToken", "refresh_token", "client_secret", "Authorization", "private_key",
     "aws_access_key_id", "sessionid", "credentials"],
)  # fmt: skip
def test_keys_that_look_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["name", "email", "user", "passenger", "keyboard", "author", 3])
def test_keys_that_do_not(key):
    assert not is_secret_key(key)


def test_mask_data_hides_values_under_secret_keys_at_any_depth():
    data = {
        "name": "Ada",
        "password": "hunter22",
        "cards": [{"token": "tok_1", "last4": "4242"}],
        "config": {"api_key": {"nested": "whole value hidden"}},
        "empty_secret": "",
    }
    assert mask_data(data) == {
        "name": "Ada",
        "password": MASK,
        "cards": [{"token": MASK, "last4": "4242"}],
        "config": {"api_key": MASK},
        "empty_secret": "",
    }
    assert data["password"] == "hunter22"  # a copy: the original is untouched


def test_unmask_data_puts_the_hidden_values_back_and_keeps_edits():
    original = {"password": "hunter22", "cards": [{"token": "tok_1"}], "n": 1}
    edited = {"password": MASK, "cards": [{"token": MASK}, {"token": "new"}], "n": 2}
    assert unmask_data(edited, original) == {
        "password": "hunter22",
        "cards": [{"token": "tok_1"}, {"token": "new"}],
        "n": 2,
    }
    # A secret typed in place of the mask is the new value.
    assert unmask_data({"password": "changed"}, original) == {"password": "changed"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("login failed: password=hunter22 user=ada", f"login failed: password={MASK} user=ada"),
        ("{'token': 'abc', 'n': 2}", f"{{'token': '{MASK}', 'n': 2}}"),
        ('{"api_key": "a\\"b", "x": 1}', f'{{"api_key": "{MASK}", "x": 1}}'),
        ("Authorization: Bearer abcdefghijkl", f"Authorization: {MASK} {MASK}"),
        ("postgres://app:s3cret@db/prod", f"postgres://app:{MASK}@db/prod"),
        ("my api key: xyz, then", f"my api key: {MASK}, then"),
        ("CLIENT_SECRET => qq", f"CLIENT_SECRET => {MASK}"),
        ("Invalid token", "Invalid token"),
        ("token validation failed", "token validation failed"),
    ],
)
def test_mask_text_hides_secret_pairs_bearer_tokens_and_url_passwords(text, expected):
    assert mask_text(text) == expected


def test_mask_text_hides_secret_values_from_the_data_wherever_they_appear():
    data = {"password": "hunter22", "nested": {"token": "it's-a-token"}, "short": {"pin": "1"}}
    text = "could not log in with hunter22 ('it\\'s-a-token')"
    assert mask_text(text, data) == f"could not log in with {MASK} ('{MASK}')"


def test_the_logging_filter_masks_messages_arguments_and_tracebacks():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("token=abc",), None)
    try:
        raise ValueError("password=hunter22")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert MaskSecrets().filter(record)
    assert record.getMessage() == f"failed: token={MASK}"
    assert record.exc_text is not None
    assert f"ValueError: password={MASK}" in record.exc_text
    assert "hunter22" not in record.exc_text


# -- stored errors and logs of a real run -------------------------------------------------------


class LeakySecret(Step):
    retry = Retry(max=0)

    def perform(self) -> None:
        raise ConnectionError(
            f"gateway refused {self.data['card']['token']}; sent api_key={self.data['api_key']}"
        )


class Payment(Sequence):
    name = "masking.Payment"
    steps = [LeakySecret]

    def on_failure(self, error: str) -> None:
        assert "tok_live_999" not in error


@pytest.mark.django_db(transaction=True)
def test_a_failing_step_stores_and_logs_its_error_with_the_secrets_masked(caplog):
    data: dict[str, Any] = {"card": {"token": "tok_live_999"}, "api_key": "sk-abcdef"}
    with caplog.at_level(logging.INFO):
        seq = Payment.start(data)
        run_jobs()
    record = SequenceRecord.objects.get(pk=seq.id)
    attempt = StepAttempt.objects.get(sequence=record)
    assert record.status == "failed"
    assert attempt.error == f"ConnectionError: gateway refused {MASK}; sent api_key={MASK}"
    assert record.error == f"LeakySecret failed: {attempt.error}"
    assert "ConnectionError" in attempt.traceback
    for secret in ("tok_live_999", "sk-abcdef"):
        assert secret not in attempt.traceback
        assert secret not in record.error
    # RQ logs the job's traceback: masked by the filter on its logger (the values under
    # key=value pairs; a bare value is known only where the data is at hand).
    assert "rq.worker" in {r.name for r in caplog.records}
    assert "sk-abcdef" not in caplog.text
    # The data keeps the real values: steps need them.
    assert record.data == data
