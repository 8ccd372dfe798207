"""Changes to the policy store's data, shared by the admin HTTP API and `inferflux keys`.

Each operation takes the current StoreData and returns the new one (or raises OpError with
the HTTP status a client should see), so callers run it inside `PolicyStore.update`: under
the cross-process lock, then saved atomically.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, TypeVar

import msgspec

from .keys import new_key
from .records import ApiKey, Grant, Limit, Permission, StoreData

T = TypeVar("T")
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class OpError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    scopes: Annotated[list[Permission], msgspec.Meta(min_length=1)]
    models: list[str] = []
    max_tokens: PositiveInt | None = None
    max_priority: int | None = None
    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None


class RoleRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    permissions: list[Permission]
    models: list[str] = []
    max_tokens: PositiveInt | None = None
    max_priority: int | None = None


class LimitRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A field left out (or null) inherits (roles, `*`, the default); 0 is unlimited."""

    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None


def parse(body: Any, kind: type[T]) -> T:
    """Validate a JSON body against `kind`: 400 naming the field on failure."""
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise OpError(400, f"invalid request body: {exc}", "invalid_value") from None


def copy(data: StoreData) -> StoreData:
    return msgspec.json.decode(msgspec.json.encode(data), type=StoreData)


def create_key(data: StoreData, request: KeyRequest) -> tuple[str, ApiKey, StoreData]:
    grant = Grant(
        permissions=list(dict.fromkeys(request.scopes)),
        models=request.models,
        max_tokens=request.max_tokens,
        max_priority=request.max_priority,
    )
    key, record = new_key(request.name, grant)
    new = copy(data)
    new.keys[record.id] = record
    if request.requests_per_minute is not None or request.tokens_per_minute is not None:
        # The field not given stays None (inherited), never 0 (unlimited).
        new.limits[record.principal] = Limit(
            requests_per_minute=request.requests_per_minute,
            tokens_per_minute=request.tokens_per_minute,
        )
    return key, record, new


def find_key(data: StoreData, id_or_name: str) -> ApiKey:
    """By id, or by name when exactly one live key has it."""
    if id_or_name in data.keys:
        return data.keys[id_or_name]
    named = [k for k in data.keys.values() if k.name == id_or_name and k.revoked_at is None]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise OpError(409, f"{len(named)} keys are named {id_or_name!r}: give the id", "ambiguous")
    raise OpError(404, f"no API key with id or name {id_or_name!r}", "key_not_found")


def revoke_key(data: StoreData, id_or_name: str) -> tuple[ApiKey, StoreData]:
    record = find_key(data, id_or_name)
    new = copy(data)
    revoked = new.keys[record.id]
    if revoked.revoked_at is None:
        revoked.revoked_at = time.time()
    return revoked, new


def put_role(data: StoreData, name: str, request: RoleRequest) -> StoreData:
    if not name or len(name) > 200:
        raise OpError(400, "a role name must have 1 to 200 characters", "invalid_value")
    new = copy(data)
    new.roles[name] = Grant(
        permissions=list(dict.fromkeys(request.permissions)),
        models=request.models,
        max_tokens=request.max_tokens,
        max_priority=request.max_priority,
    )
    return new


def delete_role(data: StoreData, name: str) -> StoreData:
    if name not in data.roles:
        raise OpError(404, f"no role named {name!r}", "role_not_found")
    new = copy(data)
    del new.roles[name]
    return new


def put_limit(data: StoreData, principal: str, request: LimitRequest) -> StoreData:
    if not principal or len(principal) > 300:
        raise OpError(400, "a limit needs a principal, role:<name> or *", "invalid_value")
    if request.requests_per_minute is None and request.tokens_per_minute is None:
        raise OpError(
            400, "give requests_per_minute and/or tokens_per_minute (0: unlimited)", "invalid_value"
        )
    new = copy(data)
    new.limits[principal] = Limit(
        requests_per_minute=request.requests_per_minute,
        tokens_per_minute=request.tokens_per_minute,
    )
    return new


def delete_limit(data: StoreData, principal: str) -> StoreData:
    if principal not in data.limits:
        raise OpError(404, f"no limit for {principal!r}", "limit_not_found")
    new = copy(data)
    del new.limits[principal]
    return new


def roles_view(data: StoreData) -> dict[str, Any]:
    return {name: msgspec.to_builtins(grant) for name, grant in sorted(data.roles.items())}


def limits_view(data: StoreData) -> dict[str, Any]:
    return {name: msgspec.to_builtins(limit) for name, limit in sorted(data.limits.items())}
