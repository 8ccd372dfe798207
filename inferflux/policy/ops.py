"""The admin operations on the policy store, one table shared by the admin HTTP API and
`inferflux keys | roles | limits`.

`OPERATIONS` maps each `AdminOp` to its body type and a function of (StoreData, name,
body) returning the new StoreData (None for a read) and the answer both front ends show.
`apply` runs one: a read on the current data, a change inside `PolicyStore.update` (under
the cross-process lock, then saved atomically). A refusal is an OpError carrying the HTTP
status a client should see. The body is validated before the store is touched, so a bad
request never takes the lock or creates the store's directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec

from .keys import new_key
from .messages import AdminOp
from .records import ApiKey, Grant, Limit, Permission, StoreData
from .store import PolicyStore

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
    max_concurrent: PositiveInt | None = None
    requests_per_minute: NonNegativeInt | None = None
    tokens_per_minute: NonNegativeInt | None = None


class RoleRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    permissions: list[Permission]
    models: list[str] = []
    max_tokens: PositiveInt | None = None
    max_priority: int | None = None
    max_concurrent: PositiveInt | None = None


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
        max_concurrent=request.max_concurrent,
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
        max_concurrent=request.max_concurrent,
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


# -- the table -------------------------------------------------------------------------
Answer = dict[str, Any]
Run = Callable[[StoreData, str, Any], tuple[StoreData | None, Answer]]


def _list_keys(data: StoreData, name: str, body: None) -> tuple[None, Answer]:
    return None, {"object": "list", "data": [k.public() for k in data.keys.values()]}


def _list_roles(data: StoreData, name: str, body: None) -> tuple[None, Answer]:
    return None, roles_view(data)


def _list_limits(data: StoreData, name: str, body: None) -> tuple[None, Answer]:
    return None, limits_view(data)


def _create_key(data: StoreData, name: str, body: KeyRequest) -> tuple[StoreData, Answer]:
    key, record, new = create_key(data, body)
    return new, {**record.public(), "key": key}  # the key itself: in this answer only


def _revoke_key(data: StoreData, name: str, body: None) -> tuple[StoreData, Answer]:
    record, new = revoke_key(data, name)
    return new, record.public()


def _put_role(data: StoreData, name: str, body: RoleRequest) -> tuple[StoreData, Answer]:
    new = put_role(data, name, body)
    return new, {"name": name, **roles_view(new)[name]}


def _delete_role(data: StoreData, name: str, body: None) -> tuple[StoreData, Answer]:
    return delete_role(data, name), {"name": name, "deleted": True}


def _put_limit(data: StoreData, name: str, body: LimitRequest) -> tuple[StoreData, Answer]:
    new = put_limit(data, name, body)
    return new, {"principal": name, **limits_view(new)[name]}


def _delete_limit(data: StoreData, name: str, body: None) -> tuple[StoreData, Answer]:
    return delete_limit(data, name), {"principal": name, "deleted": True}


# op -> (the body's type, None: no body; the operation). `name` is the key id or name,
# role name or limit principal the operation is about.
OPERATIONS: dict[AdminOp, tuple[type | None, Run]] = {
    "keys.list": (None, _list_keys),
    "keys.create": (KeyRequest, _create_key),
    "keys.revoke": (None, _revoke_key),
    "roles.list": (None, _list_roles),
    "roles.put": (RoleRequest, _put_role),
    "roles.delete": (None, _delete_role),
    "limits.list": (None, _list_limits),
    "limits.put": (LimitRequest, _put_limit),
    "limits.delete": (None, _delete_limit),
}
READS: frozenset[str] = frozenset({"keys.list", "roles.list", "limits.list"})


def apply(store: PolicyStore, op: str, name: str = "", body: Any = None) -> Answer:
    """Run one admin operation on `store` and return its answer (raises OpError).

    A change blocks on the file lock, scrypt and fsync: async callers run it in a thread."""
    entry = OPERATIONS.get(op)  # type: ignore[call-overload]
    if entry is None:
        raise OpError(400, f"unknown admin operation {op!r}", "invalid_value")
    kind, run = entry
    request = parse(body, kind) if kind is not None else None
    if op in READS:
        return run(store.data, name, request)[1]
    answer: Answer = {}

    def change(data: StoreData) -> StoreData:
        new, result = run(data, name, request)
        assert new is not None, f"{op} is a change but returned no data"
        answer.update(result)
        return new

    store.update(change)
    return answer
