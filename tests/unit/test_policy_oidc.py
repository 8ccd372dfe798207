"""OIDC JWT verification against a real HTTPS JWKS server with generated keys and CA."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import trio

from inferflux.policy.oidc import OIDCSettings, OIDCVerifier, TokenError, roles_from
from tests.policy_support import (
    AUDIENCE,
    ISSUER,
    JWKSServer,
    TLSFiles,
    ec_key,
    make_tls,
    rsa_key,
    token,
)

RSA = rsa_key("rsa-1")
EC = ec_key("ec-1")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def jwks(tls: TLSFiles) -> Iterator[JWKSServer]:
    with JWKSServer(tls, keys=[RSA, EC]).running() as server:
        yield server


def verifier(jwks: JWKSServer, tls: TLSFiles, **overrides: object) -> OIDCVerifier:
    fields: dict[str, object] = {"leeway_s": 5, "jwks_refresh_min_s": 0, **overrides}
    settings = OIDCSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks.url, ca_file=tls.ca, **fields
    )  # type: ignore[arg-type]
    return OIDCVerifier(settings, trio.current_time)


async def test_valid_rsa_and_ec_tokens(jwks: JWKSServer, tls: TLSFiles) -> None:
    v = verifier(jwks, tls)
    identity = await v.verify(token(RSA, roles=["analyst", "admin"]))
    assert identity.subject == "alice" and identity.roles == ["analyst", "admin"]
    assert (await v.verify(token(EC, sub="bob"))).subject == "bob"
    assert jwks.fetches == 1  # cached


@pytest.mark.parametrize(
    ("make", "complaint"),
    [
        (lambda: token(RSA, expires_in=-60), "expired"),
        (lambda: token(RSA, aud="someone-else"), "audience"),
        (lambda: token(RSA, iss="https://evil.test"), "issuer"),
        (lambda: token(rsa_key("rsa-1")), "signature"),  # same kid, another key
        (lambda: token(rsa_key("rsa-9")), "unknown signing key"),
        (lambda: token(RSA, nbf=int(time.time()) + 600), "not valid yet"),
        (lambda: token(RSA, kid="ec-1"), "does not match"),  # RS256 token, EC key's kid
        (lambda: "not.a.jwt", "not a valid JWT"),
    ],
)
async def test_bad_tokens_are_refused(jwks: JWKSServer, tls: TLSFiles, make, complaint) -> None:
    with pytest.raises(TokenError, match=complaint):
        await verifier(jwks, tls).verify(make())


async def test_algorithm_confusion_and_missing_claims(jwks: JWKSServer, tls: TLSFiles) -> None:
    v = verifier(jwks, tls)
    hs = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": time.time() + 60},
        "a-shared-secret-of-at-least-32-bytes!",
        algorithm="HS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(TokenError, match="not accepted"):
        await v.verify(hs)
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none", headers={"kid": "rsa-1"})
    with pytest.raises(TokenError, match="not accepted"):
        await v.verify(unsigned)
    no_exp = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"},
        RSA.private,
        algorithm="RS256",
        headers={"kid": "rsa-1"},
    )
    with pytest.raises(TokenError, match="exp"):
        await v.verify(no_exp)


async def test_leeway_allows_small_clock_skew(jwks: JWKSServer, tls: TLSFiles) -> None:
    v = verifier(jwks, tls)
    assert await v.verify(token(RSA, expires_in=-2))  # 2 s late, 5 s leeway
    with pytest.raises(TokenError, match="expired"):
        await v.verify(token(RSA, expires_in=-30))


async def test_unknown_kid_refreshes_the_jwks_once(jwks: JWKSServer, tls: TLSFiles) -> None:
    v = verifier(jwks, tls, jwks_refresh_min_s=60)
    await v.verify(token(RSA))
    rotated = rsa_key("rsa-2")
    jwks.keys.append(rotated)
    # A new kid within refresh_min_s of the last fetch is refused without a fetch...
    with pytest.raises(TokenError, match="unknown"):
        await v.verify(token(rotated))
    assert jwks.fetches == 1
    # ...and accepted once a refresh is allowed (key rotation).
    v.settings = OIDCSettings(**{**v.settings.__dict__, "jwks_refresh_min_s": 0})
    assert (await v.verify(token(rotated))).subject == "alice"
    assert jwks.fetches == 2


async def test_jwks_needs_https_and_a_trusted_certificate(jwks: JWKSServer, tls: TLSFiles) -> None:
    with pytest.raises(ValueError, match="https"):
        OIDCVerifier(
            OIDCSettings(ISSUER, AUDIENCE, "http://127.0.0.1/jwks.json"), trio.current_time
        )
    # Without the test CA the certificate does not verify: no keys, every token refused.
    untrusting = OIDCVerifier(
        OIDCSettings(ISSUER, AUDIENCE, jwks.url, jwks_refresh_min_s=0), trio.current_time
    )
    with pytest.raises(TokenError, match="unavailable"):
        await untrusting.verify(token(RSA))
    assert jwks.fetches == 0


def test_roles_claim_forms() -> None:
    claims = {"roles": ["a", 3, "b"], "scope": "x y", "realm_access": {"roles": ["r"]}}
    assert roles_from(claims, "roles") == ["a", "b"]
    assert roles_from(claims, "scope") == ["x", "y"]
    assert roles_from(claims, "realm_access.roles") == ["r"]
    assert roles_from(claims, "missing.path") == []
    assert json.dumps(roles_from({}, "roles")) == "[]"


def test_tls_files_exist(tls: TLSFiles) -> None:
    assert all(Path(p).stat().st_size > 0 for p in (tls.ca, tls.cert, tls.key))


async def test_the_jwks_is_cached_for_its_ttl(jwks: JWKSServer, tls: TLSFiles) -> None:
    now = [1000.0]
    settings = OIDCSettings(
        ISSUER, AUDIENCE, jwks.url, ca_file=tls.ca, jwks_ttl_s=300, jwks_refresh_min_s=10
    )
    v = OIDCVerifier(settings, lambda: now[0])
    await v.verify(token(RSA))
    now[0] += 299
    await v.verify(token(EC))
    assert jwks.fetches == 1
    now[0] += 2  # past the TTL: fetched again, even for a known kid
    await v.verify(token(RSA))
    assert jwks.fetches == 2


async def test_a_down_idp_is_asked_at_most_once_per_refresh_interval(
    jwks: JWKSServer, tls: TLSFiles
) -> None:
    now = [1000.0]
    settings = OIDCSettings(
        ISSUER, AUDIENCE, jwks.url, ca_file=tls.ca, jwks_ttl_s=300, jwks_refresh_min_s=10
    )
    v = OIDCVerifier(settings, lambda: now[0])
    jwks.status = 503  # down, and nothing cached yet
    for _ in range(5):
        with pytest.raises(TokenError, match="unavailable"):
            await v.verify(token(RSA))
    assert jwks.fetches == 1
    now[0] += 11
    jwks.status = 200  # back: the next refresh finds the keys
    assert (await v.verify(token(RSA))).subject == "alice"
    assert jwks.fetches == 2


@pytest.mark.parametrize(
    "document",
    [
        {"keys": "not a list"},
        {"keys": ["a string", 3, None, ["nested"]]},
        {"keys": [{"kty": "RSA", "kid": "junk", "n": 5, "e": []}, {"kty": 7}]},
        ["not", "an", "object"],
    ],
)
async def test_a_malformed_jwks_refuses_tokens_cleanly(
    jwks: JWKSServer, tls: TLSFiles, document: object
) -> None:
    jwks.document = document
    v = verifier(jwks, tls, jwks_refresh_min_s=10)
    for _ in range(3):
        with pytest.raises(TokenError, match="unknown signing key"):
            await v.verify(token(RSA))
    assert jwks.fetches == 1
