"""One admin operation in the running server: look it up in `ops.OPERATIONS`, run it, answer.

Store changes run in a worker thread (scrypt on first use, fsync) under the engine's store
lock, so the event loop keeps serving while a change is written, and two changes never
interleave. The new data is in use for the next request: no restart. Takes the store and
its lock rather than the engine's Policy, which calls it: the two modules stay acyclic.
"""

from __future__ import annotations

import logging

import trio

from . import ops
from .messages import Admin, Decision
from .store import PolicyStore, PolicyStoreError

log = logging.getLogger("inferflux.policy")


async def run_admin(
    store: PolicyStore | None, store_lock: trio.Lock, message: Admin, principal: str
) -> Decision:
    if store is None:
        return Decision(
            allowed=False,
            status=409,
            code="no_policy_store",
            reason="this server has no policy store: start it with --policy-store PATH",
            principal=principal,
        )
    op, name = message.op, message.name
    try:
        if op in ops.READS:  # the data in memory, as it is: no lock, no thread
            result = ops.apply(store, op, name, message.body)
            return Decision(allowed=True, principal=principal, result=result)
        async with store_lock:
            answer = await trio.to_thread.run_sync(ops.apply, store, op, name, message.body)
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
