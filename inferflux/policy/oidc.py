"""OIDC bearer tokens: JWTs verified with pyjwt against the issuer's JWKS.

The JWKS is fetched over HTTPS (certificate checked, against `oidc_ca_file` when set),
cached for `oidc_jwks_ttl_s`, and fetched again when a token names a key id the cache does
not have (key rotation) - but at most once per `oidc_jwks_refresh_min_s`, so tokens with
made-up key ids cannot turn the server into a JWKS request amplifier. Only RS256 and ES256
are accepted, and the algorithm must be the key's own (no `alg` confusion); `iss`, `aud`
and `exp` are required, `nbf` checked when present, all with `oidc_leeway_s` of skew.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import certifi
import httpx
import jwt
import trio

log = logging.getLogger("inferflux.policy")

ALGORITHMS = ("RS256", "ES256")


class TokenError(Exception):
    """The token is not acceptable; the message is safe to show the client."""


@dataclass(frozen=True)
class OIDCSettings:
    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str = "roles"
    principal_claim: str = "sub"
    leeway_s: float = 60.0
    jwks_ttl_s: float = 300.0
    jwks_refresh_min_s: float = 10.0
    ca_file: str = ""
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Identity:
    subject: str
    roles: list[str]
    claims: dict[str, Any]


class OIDCVerifier:
    """Verifies tokens; holds the JWKS cache. `clock` is monotonic seconds."""

    def __init__(self, settings: OIDCSettings, clock: Callable[[], float]) -> None:
        if not settings.jwks_url.startswith("https://"):
            raise ValueError(f"policy.oidc_jwks_url must be https://, got {settings.jwks_url!r}")
        self.settings = settings
        self.clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed = False  # the last fetch failed (the keys are those of an earlier one)
        self._lock = trio.Lock()
        self._ssl = ssl.create_default_context(cafile=settings.ca_file or certifi.where())

    async def verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a valid JWT: {exc}") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not accepted (only RS256, ES256)")
        if not isinstance(kid, str) or not kid:
            raise TokenError("token header has no `kid`")
        key = await self._key(kid)
        if key.algorithm_name != alg:
            raise TokenError(f"token algorithm {alg} does not match key {kid!r}")
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise TokenError(f"token audience is not {s.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenError(f"token issuer is not {s.issuer!r}") from None
        except jwt.ImmatureSignatureError:
            raise TokenError("token not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        subject = claims.get(s.principal_claim)
        if not isinstance(subject, str) or not subject:
            raise TokenError(f"token has no {s.principal_claim!r} claim")
        return Identity(subject, roles_from(claims, s.roles_claim), claims)

    async def _key(self, kid: str) -> jwt.PyJWK:
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at > self.settings.jwks_ttl_s
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:  # one fetch at a time; others reuse its result
            now = self.clock()
            recent = (
                self._fetched_at is not None
                and now - self._fetched_at < self.settings.jwks_refresh_min_s
            )
            if not recent:
                await self._fetch()
        if kid not in self._keys:
            if self._failed and not self._keys:
                raise TokenError("the identity provider's keys are unavailable")
            raise TokenError(f"unknown signing key id {kid!r}")
        return self._keys[kid]

    async def _fetch(self) -> None:
        url = self.settings.jwks_url
        try:
            async with httpx.AsyncClient(verify=self._ssl, timeout=self.settings.timeout_s) as c:
                response = await c.get(url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            # Keep the keys we have: an IdP outage must not log everyone out at once. The
            # failure counts as a fetch too, so the refresh rate limit holds while the IdP
            # is down (else every token would make one more request to it).
            log.error("cannot fetch JWKS from %s: %s", url, exc)
            self._fetched_at, self._failed = self.clock(), True
            return
        entries = document.get("keys") if isinstance(document, dict) else None
        keys: dict[str, jwt.PyJWK] = {}
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict):
                continue
            try:
                key = jwt.PyJWK(entry)
            except Exception as exc:  # noqa: BLE001 - PyJWK raises more than PyJWTError on junk
                log.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
                continue
            if key.key_id and key.algorithm_name in ALGORITHMS:
                keys[key.key_id] = key
        self._keys, self._failed = keys, False
        self._fetched_at = self.clock()
        log.info("JWKS from %s: %d keys", url, len(keys))


def roles_from(claims: dict[str, Any], claim: str) -> list[str]:
    """Role names from a claim: a dotted path (`realm_access.roles`), holding a list of
    strings or one space-separated string (the OAuth `scope` convention)."""
    value: Any = claims
    for part in claim.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
