"""The ingress end of a policy-checked generation: output guardrails and its audit line.

`Guard` holds the admitted generations (`Ticket`s) until their last delta is out, then
writes their audit line and gives unused reserved tokens back to the policy actor
(`Settle`). `watch` is the one call site per response path in app.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from actors import ActorError, ActorRef

from ..policy.audit import AuditLog, AuditRecord, timestamp
from ..policy.guardrails import Blocklist
from ..policy.messages import Settle
from ..scheduler.messages import Delta

if TYPE_CHECKING:
    from .app import Frontend
    from .generation import Generation

MAX_OPEN_TICKETS = 10_000  # admitted generations awaiting their audit line


@dataclass
class Ticket:
    """An admitted generation, until its audit line is written."""

    seq_id: int
    principal: str
    trace_id: str
    method: str
    path: str
    model: str
    prompt_tokens: int
    prompt: str
    reserved_tokens: int
    started: float


@dataclass
class Guard:
    """What the ingress holds of a configured policy: the actor to ask, the audit log it
    writes, the output blocklist, and the generations whose audit line is still due."""

    policy: ActorRef
    audit: AuditLog | None
    blocklist: Blocklist
    needs_prompt_text: bool
    tickets: dict[int, Ticket] = field(default_factory=dict)

    def record(self, **fields: Any) -> None:
        """One audit line (nothing without an audit log)."""
        if self.audit is None:
            return
        prompt, completion = fields.pop("prompt", None), fields.pop("completion", None)
        self.audit.write(AuditRecord(time=timestamp(), **fields), prompt, completion)

    def open_ticket(self, ticket: Ticket) -> None:
        if len(self.tickets) >= MAX_OPEN_TICKETS:  # a stream whose body never started
            oldest = next(iter(self.tickets.values()))
            self.close_ticket(oldest, status=499, finish_reason="abandoned")
        self.tickets[ticket.seq_id] = ticket

    def close_ticket(
        self,
        ticket: Ticket,
        *,
        status: int,
        completion_tokens: int = 0,
        completion: str | None = None,
        finish_reason: str = "",
        reason: str = "",
    ) -> None:
        if self.tickets.pop(ticket.seq_id, None) is None:
            return
        try:
            self.policy.cast_nowait(
                Settle(
                    principal=ticket.principal,
                    reserved_tokens=ticket.reserved_tokens,
                    # a request that never ran (429/503 from the scheduler) costs nothing
                    used_tokens=ticket.prompt_tokens + completion_tokens if status == 200 else 0,
                )
            )
        except ActorError:
            pass  # a restarting policy actor has fresh buckets anyway
        self.record(
            trace_id=ticket.trace_id,
            principal=ticket.principal,
            method=ticket.method,
            path=ticket.path,
            status=status,
            decision="allow",
            reason=reason,
            model=ticket.model,
            prompt_tokens=ticket.prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            latency_ms=round((trio.current_time() - ticket.started) * 1000, 3),
            prompt=ticket.prompt if self.needs_prompt_text else None,
            completion=completion,
        )

    async def watch(
        self, generations: list[Generation], deltas: AsyncIterator[tuple[int, Delta]]
    ) -> AsyncIterator[tuple[int, Delta]]:
        """The (choice, delta) stream with the output blocklist applied, then the audit line.

        A delta that would complete a blocked pattern in its choice is not sent: that
        choice ends there with finish_reason `content_filter` (what was already sent stays
        sent) and its later deltas are dropped."""
        ticket = self.tickets.get(generations[0].submit.seq_id)
        texts = [""] * len(generations)
        reasons = [""] * len(generations)
        try:
            async for index, delta in deltas:
                if reasons[index] == "content_filter":
                    continue
                if self.blocklist and delta.text:
                    if self.blocklist.first_match(texts[index] + delta.text):
                        reasons[index] = "content_filter"
                        yield (
                            index,
                            msgspec.structs.replace(
                                delta,
                                token_ids=[],
                                text="",
                                logprobs=[],
                                finish_reason="content_filter",  # type: ignore[arg-type]
                                prompt_tokens=len(generations[0].submit.prompt),
                                completion_tokens=len(generations[index].tokens),
                            ),
                        )
                        if all(reasons):
                            return
                        continue
                texts[index] += delta.text
                reasons[index] = delta.finish_reason or reasons[index]
                yield index, delta
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
            if ticket is not None:
                self.close_ticket(
                    ticket,
                    status=200,
                    completion_tokens=sum(len(gen.tokens) for gen in generations),
                    completion="\x00".join(texts),  # n > 1: the choices, NUL-separated
                    finish_reason=",".join(r or "aborted" for r in reasons),
                )


def watch(
    front: Frontend, generations: list[Generation], deltas: AsyncIterator[tuple[int, Delta]]
) -> AsyncIterator[tuple[int, Delta]]:
    """What the response paths iterate: the (choice, delta) stream, through the guard
    when a policy is configured (one call site per path in app.py)."""
    if front.guard is None:
        return deltas
    return front.guard.watch(generations, deltas)
