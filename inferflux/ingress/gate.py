"""The gate: every decision about who may do what, behind one interface.

A request meets the gate twice: `check_access` before its body is read (authentication,
the path's permission, the request rate: an unauthenticated caller costs neither parsing
nor tokenizing), then, for a generation, `admit` once the prompt is known (models, token
ceilings, guardrails, the token rate; it opens the audit ticket). `watch` wraps the deltas
on their way out (the output blocklist, then the audit line); `ended` audits a generation
that never reached `watch`; `audit` writes the line of every other protected request.

`OpenGate` is the gate with no policy configured: the policy actor (which then allows
everything but a priority above `policy.anonymous_max_priority`) still sees each
generation, as the tree's every actor sees its traffic, but nothing is audited and no
guardrail runs; request handlers never ask whether there is a policy. `PolicyGate`
(policy_gate.py) enforces one.

All of one request's state lives in its `RequestContext` (context.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import trio
from quart import Blueprint

from actors import ActorRef

from ..policy.messages import Authorize
from ..scheduler.messages import Delta
from .context import RequestContext
from .directory import ModelDirectory
from .group import GenerationGroup
from .pipeline import Prepared
from .policy_client import api_error, ask_policy
from .served import ServedModel


class Gate(Protocol):
    def blueprints(self, models: ModelDirectory, nursery: trio.Nursery) -> list[Blueprint]:
        """Routes the gate adds: the admin APIs, which exist only where a gate guards
        them (`nursery`: where an admin's pull runs)."""

    async def check_access(self, ctx: RequestContext) -> None:
        """Before the body is read; raises the denial (401/403/429)."""

    async def admit(
        self, ctx: RequestContext, model: ServedModel, prepared: Prepared, seq_id: int
    ) -> int | None:
        """May this generation run? Raises the denial; else the max_tokens ceiling for a
        request that set none (None: no ceiling)."""

    def watch(
        self, ctx: RequestContext, group: GenerationGroup, deltas: AsyncIterator[tuple[int, Delta]]
    ) -> AsyncIterator[tuple[int, Delta]]:
        """The deltas as the client may see them."""

    def ended(self, ctx: RequestContext, status: int, reason: str, tokens_sent: int = 0) -> None:
        """An admitted generation ended before `watch` had it (failed to start, or its
        streamed body was never read)."""

    def audit(self, ctx: RequestContext, status: int) -> None:
        """The response to a request is going out with `status`."""


class OpenGate:
    """No policy: everyone may do everything, and nothing is audited."""

    def __init__(self, policy: ActorRef) -> None:
        self.policy = policy

    def blueprints(self, models: ModelDirectory, nursery: trio.Nursery) -> list[Blueprint]:
        return []

    async def check_access(self, ctx: RequestContext) -> None:
        return None

    async def admit(
        self, ctx: RequestContext, model: ServedModel, prepared: Prepared, seq_id: int
    ) -> int | None:
        ask = Authorize(
            seq_id,
            model.id,
            len(prepared.prompt),
            trace_id=ctx.trace_id,
            priority=prepared.priority,  # the one thing anonymous callers are refused
        )
        decision = await ask_policy(self.policy, ask)
        if not decision.allowed:
            raise api_error(decision)
        return decision.max_tokens

    def watch(
        self, ctx: RequestContext, group: GenerationGroup, deltas: AsyncIterator[tuple[int, Delta]]
    ) -> AsyncIterator[tuple[int, Delta]]:
        return deltas

    def ended(self, ctx: RequestContext, status: int, reason: str, tokens_sent: int = 0) -> None:
        return None

    def audit(self, ctx: RequestContext, status: int) -> None:
        return None
