"""API keys, the Authorization header parser (fuzzed), token buckets and limit resolution."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferflux.policy.keys import (
    CredentialError,
    hash_key,
    key_id,
    matches,
    new_key,
    parse_authorization,
)
from inferflux.policy.limits import RateLimiter, TokenBucket, resolve
from inferflux.policy.records import Grant, Limit, StoreData, merge, upgrade

B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
token_chars = st.sampled_from("ABCxyz0189-._~+/")
tokens = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(token_chars, min_size=1, max_size=80),
    st.integers(0, 2),
)
spaces = st.text(st.sampled_from(" \t"), min_size=1, max_size=3)


@given(st.text(max_size=300))
@settings(max_examples=2000)
def test_parser_never_fails_other_than_with_a_credential_error(header: str) -> None:
    try:
        token = parse_authorization(header)
    except CredentialError as exc:
        assert str(exc)
        return
    assert token == "" or B64TOKEN.fullmatch(token)
    if token:
        assert token in header and header.strip(" \t").lower().startswith("bearer")


@given(
    st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
    spaces,
    tokens,
    st.text(" \t", max_size=2),
)
def test_parser_accepts_every_spelling_of_a_bearer_token(
    scheme: str, gap: str, token: str, tail: str
) -> None:
    assert parse_authorization(f"{tail}{scheme}{gap}{token}{tail}") == token


@given(tokens, st.text(st.characters(blacklist_characters=" \t"), min_size=1, max_size=5))
def test_parser_refuses_other_schemes_and_extra_parts(token: str, junk: str) -> None:
    for header in (f"Basic {token}", f"Bearer {token} {junk}", f"Token {token}", "Bearer", token):
        with pytest.raises(CredentialError):
            parse_authorization(header)


def test_parser_examples() -> None:
    assert parse_authorization("") == "" and parse_authorization("   ") == ""
    with pytest.raises(CredentialError, match="Bearer scheme"):
        parse_authorization("Basic dXNlcjpwYXNz")
    with pytest.raises(CredentialError, match="characters"):
        parse_authorization("Bearer abc\x00def")
    with pytest.raises(CredentialError, match="longer"):
        parse_authorization("Bearer " + "a" * 9000)


def test_keys_are_random_shown_once_and_stored_as_hashes() -> None:
    key, record = new_key("ci", Grant(permissions=["generate"]), now=1.0)
    other, _ = new_key("ci", Grant(permissions=["generate"]), now=1.0)
    assert key != other and key.startswith("ifx_") and len(key) == 4 + 12 + 1 + 43
    assert key_id(key) == record.id and record.sha256 == hash_key(key)
    assert key not in repr(record)
    assert matches(key, record)
    assert not matches(key[:-1] + ("A" if key[-1] != "A" else "B"), record)
    assert key_id("ifx_nothex_" + "a" * 43) is None and key_id("sk-abc") is None


def test_token_bucket_refills_per_minute() -> None:
    bucket = TokenBucket(capacity=60, level=60, updated=0.0)
    bucket.take(60)
    assert bucket.wait_s(1, now=0.0) == pytest.approx(1.0)
    assert bucket.wait_s(1, now=0.5) == pytest.approx(0.5)
    assert bucket.wait_s(30, now=30.0) == pytest.approx(0.0)
    assert bucket.wait_s(61, now=1000.0) == math.inf
    assert bucket.level == 60  # never above capacity
    bucket.resize(30)  # a lower limit keeps what was used
    assert bucket.level == 30 and bucket.capacity == 30


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_answers_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limit = Limit(requests_per_minute=2)
    assert limiter.admit_request("key:a", limit) is None
    assert limiter.admit_request("key:a", limit) is None
    refusal = limiter.admit_request("key:a", limit)
    assert refusal is not None and refusal.retry_after_s == 30
    assert "2 requests per minute" in refusal.message
    assert limiter.admit_request("key:b", limit) is None  # per principal
    clock.now += 30
    assert limiter.admit_request("key:a", limit) is None
    assert limiter.admit_request("key:a", Limit()) is None  # 0: unlimited


def test_tokens_per_minute_reserve_and_give_back() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock)
    limit = Limit(tokens_per_minute=600)
    assert limiter.admit_tokens("p", limit, 500) is None
    refusal = limiter.admit_tokens("p", limit, 200)
    assert refusal is not None and refusal.retry_after_s == 10  # 100 short at 10 tokens/s
    limiter.give_back_tokens("p", 400)  # the request used 100 of its 500
    assert limiter.admit_tokens("p", limit, 200) is None
    never = limiter.admit_tokens("p", limit, 601)
    assert never is not None and "more than the limit" in never.message


def test_limit_resolution_order() -> None:
    default = Limit(requests_per_minute=1, tokens_per_minute=7)
    limits = {
        "key:a": Limit(requests_per_minute=5),
        "role:free": Limit(requests_per_minute=10, tokens_per_minute=100),
        "role:pro": Limit(requests_per_minute=50, tokens_per_minute=0),
        "*": Limit(requests_per_minute=3),
    }
    own = resolve(limits, "key:a", [], default)
    assert (own.requests_per_minute, own.tokens_per_minute) == (5, 7)  # tpm: the default's
    both = resolve(limits, "oidc:x", ["free", "pro"], default)
    assert both.requests_per_minute == 50 and both.tokens_per_minute == 0  # most generous
    assert resolve(limits, "oidc:y", ["other"], default).requests_per_minute == 3
    assert resolve({}, "oidc:y", [], default) == default
    assert resolve({}, "oidc:y", [], Limit()) == Limit(requests_per_minute=0, tokens_per_minute=0)


def test_setting_one_limit_of_a_principal_keeps_the_others() -> None:
    server = Limit(tokens_per_minute=5000)
    limits = {"key:a": Limit(requests_per_minute=10), "*": Limit(requests_per_minute=100)}
    got = resolve(limits, "key:a", [], server)
    assert (got.requests_per_minute, got.tokens_per_minute) == (10, 5000)
    limits["role:r"] = Limit(tokens_per_minute=300)
    got = resolve(limits, "key:a", ["r"], server)
    assert (got.requests_per_minute, got.tokens_per_minute) == (10, 300)
    limits["key:a"] = Limit(requests_per_minute=10, tokens_per_minute=0)  # explicit: unlimited
    assert resolve(limits, "key:a", ["r"], server).tokens_per_minute == 0
    limiter = RateLimiter(FakeClock())
    limit = resolve({"key:b": Limit(requests_per_minute=10)}, "key:b", [], server)
    assert limiter.admit_tokens("key:b", limit, 5001) is not None


def test_version_1_stores_read_zero_as_not_set() -> None:
    old = StoreData(version=1, limits={"key:a": Limit(requests_per_minute=10, tokens_per_minute=0)})
    new = upgrade(old)
    assert new.version == 2 and new.limits["key:a"] == Limit(requests_per_minute=10)


def test_a_role_without_generate_never_lifts_generation_ceilings() -> None:
    analyst = Grant(permissions=["generate"], models=["m"], max_tokens=16, max_priority=0)
    viewer = Grant(permissions=["models:read"])
    both = merge([analyst, viewer])
    assert both.permissions == ["generate", "models:read"]
    assert (both.models, both.max_tokens, both.max_priority) == (["m"], 16, 0)
    wide = Grant(permissions=["generate"], max_tokens=64)
    widest = merge([analyst, viewer, wide])  # two generating roles: the most permissive
    # ... but a role without max_priority has the priority ceiling 0, not "unlimited".
    assert (widest.models, widest.max_tokens, widest.max_priority) == ([], 64, 0)
    boss = Grant(permissions=["generate"], max_priority=3)
    assert merge([wide, boss]).priority_ceiling == 3
    assert merge([wide, viewer]).priority_ceiling == 0
    assert merge([viewer, Grant(permissions=["admin"])]).max_tokens is None
