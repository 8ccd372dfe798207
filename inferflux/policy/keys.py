"""API keys and the Authorization header.

A key is `ifx_<id>_<secret>`: `id` (12 hex digits) finds the record in one dict lookup,
`secret` is 32 bytes from `secrets` (256 bits). Only SHA-256 of the whole key is stored and
the comparison is `hmac.compare_digest`, so neither the store nor response timing reveals a
key. The id is public (it is in `keys list` and in the audit log's principal).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

from .records import ApiKey, Grant

KEY_PREFIX = "ifx_"
_KEY = re.compile(r"ifx_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# RFC 6750 b64token: the only characters a bearer credential may have.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_HEADER_CHARS = 8192
_SPACE = re.compile(r"[ \t]+")


class CredentialError(ValueError):
    """The Authorization header is present but not a usable bearer credential."""


def parse_authorization(header: str) -> str:
    """The bearer token of an `Authorization` header value, or "" when there is none.

    Accepts `Bearer <token>` (scheme case-insensitive, spaces or tabs between, as RFC 9110
    allows), nothing after the token. Anything else raises CredentialError with a message
    a client can act on; it never raises another exception, whatever the input."""
    if not header or not header.strip():
        return ""
    if len(header) > MAX_HEADER_CHARS:
        raise CredentialError(f"Authorization header longer than {MAX_HEADER_CHARS} characters")
    parts = _SPACE.split(header.strip(" \t"), maxsplit=1)
    scheme, token = parts[0], parts[1] if len(parts) > 1 else ""
    if scheme.lower() != "bearer":
        raise CredentialError(
            f"Authorization must use the Bearer scheme (`Authorization: Bearer <key>`), "
            f"got scheme {scheme[:20]!r}"
        )
    if not token:
        raise CredentialError("Authorization: Bearer is missing its token")
    if not _B64TOKEN.fullmatch(token):
        raise CredentialError("the bearer token has characters a token cannot have")
    return token


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, grant: Grant, now: float | None = None) -> tuple[str, ApiKey]:
    """(the key, shown once; its record, which holds only the hash)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        id=key_id,
        name=name,
        sha256=hash_key(key),
        grant=grant,
        created_at=time.time() if now is None else now,
    )
    return key, record


def key_id(token: str) -> str | None:
    """The id of a well-formed API key, else None."""
    match = _KEY.fullmatch(token)
    return match.group(1) if match else None


def matches(token: str, record: ApiKey) -> bool:
    """Constant-time check of a presented key against its stored hash."""
    return hmac.compare_digest(hash_key(token), record.sha256)
