"""The policy actor: every request is authorized here before the scheduler sees it.

Until the policy issue lands it allows everything; it is already in the request path so
adding authentication, rate limits and audit later changes no other actor.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors import Actor, Envelope


class Authorize(msgspec.Struct, frozen=True):
    seq_id: int
    model: str
    prompt_tokens: int
    principal: str = "anonymous"
    trace_id: str = ""


class Decision(msgspec.Struct, frozen=True):
    allowed: bool
    reason: str = ""


class PolicyActor(Actor):
    async def handle(self, message: Any, envelope: Envelope) -> Any:
        if isinstance(message, Authorize):
            return Decision(True)
        raise TypeError(f"policy cannot handle {type(message).__name__}")
