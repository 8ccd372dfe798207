"""The policy actor: every request is authorized here before the scheduler sees it.

With no policy configured it allows everything (the local default) but a priority above
`policy.anonymous_max_priority` (0: priority preempts other callers' work). Otherwise it answers
`Access`, `Authorize` and `Admin` with a `Decision`, takes `Settle` casts, and watches the
store file for changes made by `inferflux keys`.

Access/Authorize are answered from tasks in the actor's nursery (the envelope is deferred),
not in the handle loop: a JWKS fetch or an OPA round trip for one request must not hold up
every other request. Rate-limit buckets are checked and charged without a checkpoint in
between, so concurrent decisions cannot overspend. Admin operations run in the handle loop,
one at a time. Not stateless: a restart (supervised like any actor) starts from fresh rate
and failed-authentication buckets, no running generations (max_concurrent) and an empty
JWKS cache; the store object, already decrypted at startup, is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from actors import Actor, Envelope

from .audit import AuditLog
from .engine import Policy, priority_denial
from .messages import Access, Admin, Authorize, Decision, PolicyMessage, Settle

__all__ = ["Access", "Admin", "Authorize", "Decision", "PolicyActor", "Settle"]

log = logging.getLogger("inferflux.policy")


class PolicyActor(Actor):
    message_type = PolicyMessage
    reply_type = Decision
    error_type = None  # it refuses nothing: a denial is a Decision

    def __init__(
        self,
        name: str,
        *,
        make_policy: Callable[[], Policy] | None = None,
        store_poll_s: float = 1.0,
        audit: AuditLog | None = None,
        anonymous_max_priority: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self._make_policy = make_policy
        self.anonymous_max_priority = anonymous_max_priority
        self.policy: Policy | None = None
        self.store_poll_s = store_poll_s
        self.audit = audit  # written by the ingress; closed here, the last to stop of the two
        self.allowed = 0
        self.denied = 0

    async def started(self) -> None:
        if self._make_policy is not None:
            self.policy = self._make_policy()
            if self.policy.store is not None:
                self.nursery.start_soon(self._watch_store)

    async def stopping(self) -> None:
        if self.policy is not None and self.policy.opa is not None:
            await self.policy.opa.aclose()
        # The ingress stops before the policy (reverse start order), so on a graceful stop
        # its last audit lines are written; after a crash the ingress still writes.
        if self.audit is not None and self.state != "crashed":
            self.audit.close()

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        policy = self.policy
        if isinstance(message, (Authorize, Access)):
            if policy is None:
                # No policy: everyone is anonymous, and may do anything but jump the queue.
                if isinstance(message, Authorize):
                    refused = priority_denial(
                        message.priority, self.anonymous_max_priority, "anonymous"
                    )
                    if refused is not None:
                        return refused
                return Decision(allowed=True)
            decide = policy.authorize if isinstance(message, Authorize) else policy.access
            envelope.defer()
            self.nursery.start_soon(self._answer, decide, message, envelope)
            return None
        if isinstance(message, Settle):
            if policy is not None:
                policy.settle(message)
            return None
        if isinstance(message, Admin):
            if policy is None:
                return Decision(
                    allowed=False, status=409, code="no_policy_store", reason="policy is off"
                )
            return await policy.admin(message)
        raise TypeError(f"policy cannot handle {type(message).__name__}")

    async def _answer(
        self, decide: Callable[[Any], Awaitable[Decision]], message: Any, envelope: Envelope
    ) -> None:
        try:
            decision = await decide(message)
        except Exception:
            # One request's unexpected failure answers that request, not every request the
            # actor holds (a crash would also reset every principal's rate buckets).
            log.exception("policy decision failed (trace %s)", getattr(message, "trace_id", ""))
            decision = Decision(
                allowed=False,
                status=503,
                code="policy_error",
                reason="the policy check failed; retry",
                retry_after_s=1,
            )
        if decision.allowed:
            self.allowed += 1
        else:
            self.denied += 1
        envelope.reply(decision)
        self.messages_out += 1

    async def _watch_store(self) -> None:
        assert self.policy is not None
        while True:
            await trio.sleep(self.store_poll_s)
            await self.policy.reload_if_changed()

    def details(self) -> dict[str, float | int | str]:
        if self.policy is None:
            return {"mode": "off"}
        return {
            "mode": "required" if self.policy.auth_required else "off",
            "allowed": self.allowed,
            "denied": self.denied,
        }
