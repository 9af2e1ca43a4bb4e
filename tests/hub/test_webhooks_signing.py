"""Webhook signatures and the retry schedule, without I/O."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from shopfloor.hub.config import parse_config
from shopfloor.hub.errors import ConfigError
from shopfloor.hub.orders.backoff import RetryPolicy
from shopfloor.hub.orders.signing import new_secret, sign, signature_header, verify

BODY = b'{"id":"e1","type":"order.status_changed","status":"completed"}'
SECRET = "whsec_test"
TS = 1_764_000_000


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), f"{TS}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, TS, BODY) == expected
    assert signature_header(SECRET, TS, BODY) == f"v1={expected}"


def test_verify_accepts_the_real_signature_and_nothing_else() -> None:
    header = signature_header(SECRET, TS, BODY)
    assert verify(SECRET, BODY, timestamp=str(TS), signature=header, now_s=TS + 10)
    assert not verify("whsec_other", BODY, timestamp=str(TS), signature=header, now_s=TS)
    assert not verify(SECRET, BODY + b" ", timestamp=str(TS), signature=header, now_s=TS)
    # the timestamp is signed: moving it breaks the signature
    assert not verify(SECRET, BODY, timestamp=str(TS + 1), signature=header, now_s=TS)
    assert not verify(SECRET, BODY, timestamp="soon", signature=header, now_s=TS)


def test_verify_rejects_an_old_timestamp_and_accepts_one_of_several_signatures() -> None:
    header = signature_header(SECRET, TS, BODY)
    assert not verify(SECRET, BODY, timestamp=str(TS), signature=header, now_s=TS + 301)
    rotated = f"v1={'0' * 64}, {header}"
    assert verify(SECRET, BODY, timestamp=str(TS), signature=rotated, now_s=TS)


GOOD = signature_header(SECRET, TS, BODY)


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [
        (str(TS), "v1=" + "é" * 64),  # non-ASCII: hmac.compare_digest raised TypeError on str
        (str(TS), "v1=\udcff" + GOOD[4:]),  # a lone surrogate cannot even be encoded strictly
        (str(TS), f"v1=é, {GOOD}x"),
        ("²", GOOD),  # isdigit() but not int()
        ("1" * 5000, GOOD),  # int() refuses more than 4300 digits
        ("1_764_000_000", GOOD),  # int() accepts these, but they are not what was signed
        (f" {TS}", GOOD),
        (f"+{TS}", GOOD),
        (None, GOOD),  # missing headers
        (str(TS), None),
        ("", ""),
        (str(TS), ""),
        (str(TS), "v1="),
        (str(TS), "v1"),
        (str(TS), "=,=,,"),
        (str(TS), GOOD.upper()),
    ],
)
def test_verify_says_no_to_malformed_or_missing_headers_and_never_raises(
    timestamp: str | None, signature: str | None
) -> None:
    assert verify(SECRET, BODY, timestamp=timestamp, signature=signature, now_s=TS) is False


def test_secrets_are_fresh_and_long() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_")
    assert len(a) > 40


def test_backoff_doubles_within_jitter_up_to_the_cap_then_gives_up() -> None:
    policy = RetryPolicy(max_attempts=6, base_delay_s=10, max_delay_s=60)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 60), (5, 60)]:
        delays = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays))
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed
    assert not policy.gives_up(5)
    assert policy.gives_up(6)


@pytest.mark.parametrize("attempt", [0, -3])
def test_backoff_never_goes_below_half_the_base(attempt: int) -> None:
    policy = RetryPolicy(base_delay_s=2, max_delay_s=10)
    assert 1 <= policy.delay_s(attempt, random.Random(1)) <= 2


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("[webhooks]\nmax_attemps = 3\n", "webhooks.max_attemps: unknown key (fix: did you mean"),
        ("[webhooks]\nmax_attempts = 2.5\n", "webhooks.max_attempts: must be a whole number"),
        ("[webhooks]\ntimeout_s = 0\n", "webhooks.timeout_s: = 0 is outside"),
        ("[webhooks]\nretry_base_s = 60\nretry_max_s = 10\n", "retry_max_s (10.0) is below"),
        ("[orders]\nsweep_s = -1\n", "orders.sweep_s: = -1 is outside"),
    ],
)
def test_bad_webhook_settings_name_the_key_and_the_fix(section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'[hub]\nsite = "s"\n{section}', source="hub.toml")
    assert problem in str(caught.value)
    assert str(caught.value).startswith("hub.toml: ")


def test_webhook_settings_reach_the_retry_policy() -> None:
    config = parse_config(
        '[hub]\nsite = "s"\n[webhooks]\nmax_attempts = 3\nretry_base_s = 0.5\nconcurrency = 2\n'
    )
    hooks = config.orders.webhooks
    assert (hooks.retry.max_attempts, hooks.retry.base_delay_s, hooks.concurrency) == (3, 0.5, 2)
    assert parse_config('[hub]\nsite = "s"\n').orders.webhooks.retry == RetryPolicy()
