"""What the policy store holds: API keys (hashes only), roles, rate limits.

A `Grant` is what a principal may do: permissions plus ceilings (models, max_tokens,
priority, generations at once). API keys carry their own grant; OIDC principals get the
union of the grants of the roles their token names. Empty `models`, a `None` max_tokens
and a `None` max_concurrent mean "no restriction". A `None` max_priority does not:
priority preempts other callers' work, so it is a privilege granted explicitly, and a
grant without one has the ceiling 0 (the default priority). Stores written before this
rule read their `None` the new way.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Permission = Literal["generate", "models:read", "admin"]
PERMISSIONS: tuple[str, ...] = ("generate", "models:read", "admin")
DEFAULT_MAX_PRIORITY = 0
"""The priority ceiling of a grant that sets none: the default priority, nothing above."""


class Grant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    permissions: list[Permission] = []
    models: list[str] = []
    """Model ids this grant may use; empty: every model."""
    max_tokens: int | None = None
    """Ceiling on a request's max_tokens; a request that sets none is clamped to it."""
    max_priority: int | None = None
    """Highest `priority` a request may ask for; None: 0 (DEFAULT_MAX_PRIORITY), so only
    a grant that says so lets a request jump the queue."""

    max_concurrent: int | None = None
    """Generations (choices: n=4 is 4) this principal may run at once; beyond it 429 with
    Retry-After. None: no limit."""

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models

    @property
    def priority_ceiling(self) -> int:
        return DEFAULT_MAX_PRIORITY if self.max_priority is None else self.max_priority


def merge(grants: list[Grant]) -> Grant:
    """The union of several grants (an OIDC principal with several roles): every
    permission of any of them, and the most permissive ceiling of the roles that grant
    `generate` (for priority, a role without a max_priority counts with its ceiling, 0).
    The ceilings only bound generation, so a role without `generate` (a viewer) has no say
    in them: letting its "no ceiling" count would lift the ceilings of every generating
    role it is combined with."""
    if not grants:
        return Grant()
    permissions = sorted({p for g in grants for p in g.permissions}, key=PERMISSIONS.index)
    generating = [g for g in grants if "generate" in g.permissions]
    if not generating:
        return Grant(permissions=permissions)
    models: list[str] = []
    if all(g.models for g in generating):
        models = sorted({m for g in generating for m in g.models})
    max_tokens = None
    if all(g.max_tokens is not None for g in generating):
        max_tokens = max(g.max_tokens for g in generating if g.max_tokens is not None)
    max_priority = None  # not "unlimited": see Grant.max_priority
    if any(g.max_priority is not None for g in generating):
        max_priority = max(g.priority_ceiling for g in generating)
    max_concurrent = None
    if all(g.max_concurrent is not None for g in generating):
        max_concurrent = max(g.max_concurrent for g in generating if g.max_concurrent is not None)
    return Grant(
        permissions=permissions,
        models=models,
        max_tokens=max_tokens,
        max_priority=max_priority,
        max_concurrent=max_concurrent,
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
            "max_concurrent": self.grant.max_concurrent,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class Limit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """Each field separately: None inherits it (roles, then `*`, then the configured
    default), 0 lifts it explicitly (unlimited), N is the limit. Setting one field of a
    principal must not lift the other one, so "not set" and "unlimited" differ."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    """Prompt + max_tokens reserved at admission, the unused part given back at the end."""


STORE_VERSION = 2


class StoreData(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    version: int = STORE_VERSION
    keys: dict[str, ApiKey] = {}
    roles: dict[str, Grant] = {}
    limits: dict[str, Limit] = {}
    """By principal (`key:<id>`, `oidc:<sub>`, `anonymous`), by role (`role:<name>`), or
    `*` for everyone without a more specific entry."""


def upgrade(data: StoreData) -> StoreData:
    """Version 1 stored an unset limit field as 0, which also meant unlimited: a key
    created with only a request rate had no token rate at all. Read those zeros as "not
    set" (inherit), the reading that never grants more than was asked for."""
    if data.version < 2:
        for name, limit in data.limits.items():
            data.limits[name] = Limit(
                requests_per_minute=limit.requests_per_minute or None,
                tokens_per_minute=limit.tokens_per_minute or None,
            )
        data.version = STORE_VERSION
    return data
