"""The ingress end of a policy-checked generation: output guardrails and its audit line.

`Guard` holds the admitted generations (`Ticket`s) until their last delta is out, then
writes their audit line and gives unused reserved tokens back to the policy actor
(`Settle`). `watch` is the one call site per response path in app.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from actors import ActorError, ActorRef

from ..policy.audit import AuditLog, AuditRecord, timestamp
from ..policy.guardrails import Blocklist
from ..policy.messages import Settle
from ..scheduler.messages import Delta
from .errors import APIError

if TYPE_CHECKING:
    from .app import Frontend
    from .generation import Generation

MAX_OPEN_TICKETS = 10_000  # admitted generations awaiting their audit line
STREAM_START_S = 10.0  # a streamed body not started by then will never be (client gone)


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
    """`watch` has begun: its `finally` writes the line (with the completion)."""


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
        if len(self.tickets) >= MAX_OPEN_TICKETS:
            # Every path closes its ticket, so this is a last resort against a leak. The
            # oldest may still be generating: its reservation stays spent (a refund could
            # let the principal overspend while it runs).
            oldest = next(iter(self.tickets.values()))
            self.close_ticket(
                oldest, status=499, finish_reason="abandoned", reason="evicted", refund=False
            )
        self.tickets[ticket.seq_id] = ticket

    def end(self, seq_id: int, status: int, reason: str, completion_tokens: int = 0) -> None:
        """Close the ticket of a generation that ended before its deltas were watched
        (failed or abandoned while starting, a body never iterated); nothing if it is
        closed already or `watch` has it."""
        ticket = self.tickets.get(seq_id)
        if ticket is not None and not ticket.watched:
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
        try:
            if refund:
                self.policy.cast_nowait(
                    Settle(
                        principal=ticket.principal,
                        reserved_tokens=ticket.reserved_tokens,
                        used_tokens=min(used, ticket.reserved_tokens),
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
        if ticket is not None:
            ticket.watched = True
        texts = [""] * len(generations)
        reasons = [""] * len(generations)
        error: BaseException | None = None
        try:
            async for index, delta in deltas:
                if reasons[index] == "content_filter":
                    continue
                if self.blocklist and delta.text:
                    # Earlier text was checked already: only a match that ends in this
                    # delta is new, so scan a bounded tail, not the whole output again.
                    tail = texts[index][-OUTPUT_LOOKBACK_CHARS:] + delta.text
                    if self.blocklist.first_match(tail):
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
        except BaseException as exc:
            error = exc  # audited as what the client got: its status, 499 if it left
            raise
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()
            if ticket is not None:
                status, reason = outcome(error)
                self.close_ticket(
                    ticket,
                    status=status,
                    reason=reason,
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


def end(front: Frontend, seq_id: int, error: BaseException | None) -> None:
    """The audit line of a generation that failed or was abandoned while starting."""
    if front.guard is not None:
        front.guard.end(seq_id, *outcome(error))


# How far back an output pattern may reach from the delta that completes it: longer
# matches than this are not seen (docs/security.md). Keeps the check per delta bounded.
OUTPUT_LOOKBACK_CHARS = 2048


class StreamBody:
    """A streamed response body whose generations and audit ticket are closed even when
    it is never iterated: a client that leaves between the handler's return and the
    first body byte cancels the request before quart enters the body, and an async
    generator that never started never runs its `finally`. Quart closes a body it did
    enter (`aclose`); one it never entered is closed after STREAM_START_S."""

    def __init__(
        self,
        front: Frontend,
        generations: list[Generation],
        body: AsyncGenerator[bytes, None],
        start_within_s: float = STREAM_START_S,
    ) -> None:
        self._front, self._generations, self._body = front, generations, body
        self._started = self._done = False
        self._watchdog = trio.CancelScope()
        if front.nursery is not None:
            front.nursery.start_soon(self._close_unstarted, start_within_s)

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        self._watchdog.cancel()  # quart closes a body it started
        if self._done:
            raise StopAsyncIteration
        return await self._body.__anext__()

    async def aclose(self) -> None:
        try:
            await self._body.aclose()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._watchdog.cancel()
        if not self._started:  # else the body's own `finally` closed them
            with trio.CancelScope(shield=True):
                for generation in self._generations:
                    await generation.close()
        if self._front.guard is not None:  # a no-op once `watch` has the ticket
            self._front.guard.end(
                self._generations[0].submit.seq_id,
                499,
                "client_gone",
                completion_tokens=sum(len(gen.tokens) for gen in self._generations),
            )

    async def _close_unstarted(self, after_s: float) -> None:
        with self._watchdog:
            await trio.sleep(after_s)
            await self._finish()
