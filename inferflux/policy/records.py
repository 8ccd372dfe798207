"""What the policy store holds: API keys (hashes only), roles, rate limits.

A `Grant` is what a principal may do: permissions plus three ceilings (models, max_tokens,
priority). API keys carry their own grant; OIDC principals get the union of the grants of
the roles their token names. Empty `models` and `None` ceilings mean "no restriction".
"""

from __future__ import annotations

from typing import Literal

import msgspec

Permission = Literal["generate", "models:read", "admin"]
PERMISSIONS: tuple[str, ...] = ("generate", "models:read", "admin")


class Grant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    permissions: list[Permission] = []
    models: list[str] = []
    """Model ids this grant may use; empty: every model."""
    max_tokens: int | None = None
    """Ceiling on a request's max_tokens; a request that sets none is clamped to it."""
    max_priority: int | None = None
    """Highest `priority` a request may ask for."""

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


def merge(grants: list[Grant]) -> Grant:
    """The union of several grants (an OIDC principal with several roles): every
    permission of any of them, and the most permissive ceiling of those that hold it."""
    if not grants:
        return Grant()
    permissions = sorted({p for g in grants for p in g.permissions}, key=PERMISSIONS.index)
    models: list[str] = []
    if all(g.models for g in grants):
        models = sorted({m for g in grants for m in g.models})
    max_tokens = None
    if all(g.max_tokens is not None for g in grants):
        max_tokens = max(g.max_tokens for g in grants if g.max_tokens is not None)
    max_priority = None
    if all(g.max_priority is not None for g in grants):
        max_priority = max(g.max_priority for g in grants if g.max_priority is not None)
    return Grant(
        permissions=permissions, models=models, max_tokens=max_tokens, max_priority=max_priority
    )


class ApiKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    id: str
    """Public identifier, also part of the key itself (`ifx_<id>_<secret>`)."""
    name: str
    sha256: str
    """Hex SHA-256 of the whole key. The key is 256 random bits, so a fast hash is enough:
    there is nothing to brute-force."""
    grant: Grant
    created_at: float
    revoked_at: float | None = None

    @property
    def principal(self) -> str:
        return f"key:{self.id}"

    def public(self) -> dict[str, object]:
        """What list/create show: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "principal": self.principal,
            "scopes": list(self.grant.permissions),
            "models": list(self.grant.models),
            "max_tokens": self.grant.max_tokens,
            "max_priority": self.grant.max_priority,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class Limit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    requests_per_minute: int = 0
    """0: unlimited."""
    tokens_per_minute: int = 0
    """Prompt + max_tokens reserved at admission, the unused part given back at the end;
    0: unlimited."""


class StoreData(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: int = 1
    keys: dict[str, ApiKey] = {}
    roles: dict[str, Grant] = {}
    limits: dict[str, Limit] = {}
    """By principal (`key:<id>`, `oidc:<sub>`, `anonymous`), by role (`role:<name>`), or
    `*` for everyone without a more specific entry."""
