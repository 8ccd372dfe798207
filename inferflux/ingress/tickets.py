"""Audit tickets: an admitted generation's audit line, written once, when it ends.

A `Ticket` is opened when the policy admits a generation and closed exactly once: by the
gate's `watch` when its last delta is out (with the completion), or, for a generation
that never got that far, when it failed or was abandoned. Closing writes the audit line
and gives the unused part of the reserved tokens, and the generation's place among its
principal's running ones, back to the policy actor (`Settle`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from actors import ActorError, ActorRef

from ..policy.audit import AuditLog, AuditRecord, timestamp
from ..policy.messages import Settle
from .errors import APIError

MAX_OPEN_TICKETS = 10_000  # admitted generations awaiting their audit line


def outcome(error: BaseException | None) -> tuple[int, str]:
    """The audited (status, reason) of an admitted generation that ended with `error`."""
    if error is None:
        return 200, ""
    if isinstance(error, APIError):
        return error.status, error.code or "backend_error"
    if not isinstance(error, Exception):  # Cancelled, GeneratorExit: the client left
        return 499, "client_gone"
    return 500, "internal_error"


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
    watched: bool = False
    """The gate's `watch` has begun: its `finally` writes the line (with the completion)."""
    client: str = ""


@dataclass
class TicketBook:
    """The open tickets, the audit log their lines go to, and the policy actor their
    unused tokens go back to."""

    policy: ActorRef
    audit: AuditLog | None
    needs_prompt_text: bool
    tickets: dict[int, Ticket] = field(default_factory=dict)

    def record(self, **fields: Any) -> None:
        """One audit line (nothing without an audit log)."""
        if self.audit is None:
            return
        prompt, completion = fields.pop("prompt", None), fields.pop("completion", None)
        self.audit.write(AuditRecord(time=timestamp(), **fields), prompt, completion)

    def is_open(self, ticket: Ticket) -> bool:
        return ticket.seq_id in self.tickets

    def open_ticket(self, ticket: Ticket) -> None:
        if len(self.tickets) >= MAX_OPEN_TICKETS:
            # Every path closes its ticket, so this is a last resort against a leak. The
            # oldest may still be generating: its reservation stays spent (a refund could
            # let the principal overspend while it runs), but its max_concurrent place is
            # given back (kept, a leaked ticket would lock its principal out for good).
            oldest = next(iter(self.tickets.values()))
            self.close_ticket(
                oldest, status=499, finish_reason="abandoned", reason="evicted", refund=False
            )
        self.tickets[ticket.seq_id] = ticket

    def end_unwatched(
        self, ticket: Ticket, status: int, reason: str, completion_tokens: int = 0
    ) -> None:
        """Close the ticket of a generation that ended before its deltas were watched
        (failed or abandoned while starting, a body never iterated); nothing if it is
        closed already or `watch` has it."""
        if not ticket.watched:
            self.close_ticket(
                ticket,
                status=status,
                reason=reason,
                completion_tokens=completion_tokens,
                finish_reason="aborted",
            )

    def close_ticket(
        self,
        ticket: Ticket,
        *,
        status: int,
        completion_tokens: int = 0,
        completion: str | None = None,
        finish_reason: str = "",
        reason: str = "",
        refund: bool = True,
    ) -> None:
        if self.tickets.pop(ticket.seq_id, None) is None:
            return
        # A request that never produced a token (429/503 from the scheduler, a client gone
        # while queued) costs nothing; one cut short costs what it generated.
        used = ticket.prompt_tokens + completion_tokens
        if status != 200 and completion_tokens == 0:
            used = 0
        if not refund:
            used = ticket.reserved_tokens
        try:
            # Always settled, also without a refund: the generation's place among its
            # principal's running ones (max_concurrent) is given back either way.
            self.policy.cast_nowait(
                Settle(
                    principal=ticket.principal,
                    reserved_tokens=ticket.reserved_tokens,
                    used_tokens=min(used, ticket.reserved_tokens),
                    seq_id=ticket.seq_id,
                )
            )
        except ActorError:
            pass  # a restarting policy actor has fresh buckets and counts anyway
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
            client=ticket.client,
        )
