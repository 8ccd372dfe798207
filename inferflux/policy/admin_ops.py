"""One admin operation in the running server: validate, change the store, answer.

Store changes run in a worker thread (scrypt on first use, fsync) under the engine's store
lock, so the event loop keeps serving while a change is written, and two changes never
interleave. The new data is in use for the next request: no restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from . import ops
from .messages import Admin, Decision
from .records import StoreData
from .store import PolicyStoreError

if TYPE_CHECKING:
    from .engine import Policy

log = logging.getLogger("inferflux.policy")


async def run_admin(policy: Policy, message: Admin, principal: str) -> Decision:
    store = policy.store
    if store is None:
        return Decision(
            allowed=False,
            status=409,
            code="no_policy_store",
            reason="this server has no policy store: start it with --policy-store PATH",
            principal=principal,
        )
    op, name = message.op, message.name
    if op == "keys.list":
        result: Any = {"object": "list", "data": [k.public() for k in store.data.keys.values()]}
        return Decision(allowed=True, principal=principal, result=result)
    if op == "roles.list":
        return Decision(allowed=True, principal=principal, result=ops.roles_view(store.data))
    if op == "limits.list":
        return Decision(allowed=True, principal=principal, result=ops.limits_view(store.data))
    answer: dict[str, Any] = {}

    def change(data: StoreData) -> StoreData:
        if op == "keys.create":
            key, record, new = ops.create_key(data, ops.parse(message.body, ops.KeyRequest))
            answer.update(record.public(), key=key)
            return new
        if op == "keys.revoke":
            record, new = ops.revoke_key(data, name)
            answer.update(record.public())
            return new
        if op == "roles.put":
            new = ops.put_role(data, name, ops.parse(message.body, ops.RoleRequest))
            answer.update(name=name, **ops.roles_view(new)[name])
            return new
        if op == "roles.delete":
            answer.update(name=name, deleted=True)
            return ops.delete_role(data, name)
        if op == "limits.put":
            new = ops.put_limit(data, name, ops.parse(message.body, ops.LimitRequest))
            answer.update(principal=name, **ops.limits_view(new)[name])
            return new
        if op == "limits.delete":
            answer.update(principal=name, deleted=True)
            return ops.delete_limit(data, name)
        raise ops.OpError(400, f"unknown admin operation {op!r}", "invalid_value")

    try:
        async with policy.store_lock:
            await trio.to_thread.run_sync(store.update, change)
    except ops.OpError as exc:
        return Decision(
            allowed=False, status=exc.status, code=exc.code, reason=str(exc), principal=principal
        )
    except (PolicyStoreError, OSError) as exc:
        log.error("admin %s by %s: cannot write the policy store: %s", op, principal, exc)
        return Decision(
            allowed=False,
            status=503,
            code="store_unavailable",
            reason=f"cannot write the policy store: {exc}",
            principal=principal,
        )
    # The key itself is in the answer, never in a log line.
    log.info("admin %s %s by %s", op, answer.get("id") or name, principal)
    status = 201 if op == "keys.create" else 200
    return Decision(allowed=True, status=status, principal=principal, result=answer)
