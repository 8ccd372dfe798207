"""The gate with a policy configured: the policy actor decides, the ingress enforces the
output blocklist and writes the audit lines (gate.py describes the interface).

Every protected request gets one audit line: a denial or a plain request when its
response goes out (`audit`); an admitted generation when its last delta is out (`watch`,
with the completion tokens) or when it ends before that (`ended`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import trio
from quart import Blueprint

from actors import ActorError, ActorRef

from ..policy.audit import AuditLog
from ..policy.guardrails import Blocklist
from ..policy.messages import Access, Authorize, Decision, Settle
from ..scheduler.messages import Delta
from .admin import admin_blueprint
from .context import RequestContext
from .directory import ModelDirectory
from .errors import APIError
from .group import GenerationGroup
from .models_admin import models_admin_blueprint
from .pipeline import Prepared
from .policy_client import api_error, ask_policy, required_permission
from .served import ServedModel
from .tickets import Ticket, TicketBook, outcome

# How far back an output pattern may reach from the delta that completes it: longer
# matches than this are not seen (docs/security.md). Keeps the check per delta bounded.
OUTPUT_LOOKBACK_CHARS = 2048

AUDIT_UNAVAILABLE = Decision(
    allowed=False,
    status=503,
    code="audit_unavailable",
    reason="the audit log cannot be written, and this server records every request before "
    "serving it (policy.audit_fail_closed); retry later",
    retry_after_s=5,
)


class PolicyGate:
    def __init__(
        self,
        policy: ActorRef,
        audit: AuditLog | None,
        blocklist: Blocklist,
        needs_prompt_text: bool,
    ) -> None:
        self.policy = policy
        self.blocklist = blocklist
        self.book = TicketBook(policy, audit, needs_prompt_text)

    def blueprints(self, models: ModelDirectory, nursery: trio.Nursery) -> list[Blueprint]:
        return [admin_blueprint(self.policy), models_admin_blueprint(models, nursery)]

    async def check_access(self, ctx: RequestContext) -> None:
        permission = required_permission(ctx.path)
        if permission is None or ctx.method == "OPTIONS":
            return
        ctx.audited = True
        audit = self.book.audit
        if audit is not None and audit.refusing:
            # policy.audit_fail_closed: nothing protected runs unrecorded. This refusal's
            # own line is the probe that notices when the log can be written again.
            ctx.denial = AUDIT_UNAVAILABLE
            # Not without a checkpoint: a response completed before hypercorn took in the
            # request's body leaves the keep-alive connection hanging on its next request
            # (measured: the openai client's retry then times out).
            await trio.lowlevel.checkpoint()
            raise api_error(AUDIT_UNAVAILABLE)
        decision = await ask_policy(
            self.policy,
            Access(
                credential=ctx.credential,
                permission=permission,
                path=ctx.path,
                trace_id=ctx.trace_id,
                always_authenticate=permission == "admin",
                client=ctx.client,
            ),
        )
        ctx.principal = decision.principal
        if not decision.allowed:
            ctx.denial = decision
            raise api_error(decision)

    async def admit(
        self, ctx: RequestContext, model: ServedModel, prepared: Prepared, seq_id: int
    ) -> int | None:
        if self.blocklist and prepared.want_logprobs:
            # The top alternatives of each token would show what the output blocklist cuts
            # from the text: refused outright rather than filtered (nothing to get wrong).
            raise APIError(
                400,
                "logprobs are not available on this server (an output blocklist is configured)",
                param="logprobs",
                code="unsupported_parameter",
            )
        text = model.tokenizer.detokenize(prepared.prompt) if self.book.needs_prompt_text else ""
        ctx.prompt_text = text
        ask = Authorize(
            seq_id,
            model.id,
            len(prepared.prompt),
            trace_id=ctx.trace_id,
            credential=ctx.credential,
            max_tokens=prepared.max_tokens,
            room=prepared.room,
            priority=prepared.priority,
            choices=prepared.n,
            prompt=text,
            path=ctx.path,
            client=ctx.client,
        )
        try:
            decision = await ask_policy(self.policy, ask)
        except BaseException:
            # Timed out or cancelled (the client left) while the policy decided: it may
            # admit, and count, a generation nobody will run or settle. Give it up.
            self._abandon(seq_id)
            raise
        ctx.principal = decision.principal
        if not decision.allowed:
            ctx.denial = decision
            raise api_error(decision)
        ctx.ticket = Ticket(
            seq_id=seq_id,
            principal=decision.principal,
            trace_id=ctx.trace_id,
            method=ctx.method,
            path=ctx.path,
            model=model.id,
            prompt_tokens=len(prepared.prompt),
            prompt=text,
            reserved_tokens=decision.reserved_tokens,
            started=ctx.started,
            client=ctx.client,
        )
        self.book.open_ticket(ctx.ticket)
        return decision.max_tokens

    async def watch(
        self, ctx: RequestContext, group: GenerationGroup, deltas: AsyncIterator[tuple[int, Delta]]
    ) -> AsyncIterator[tuple[int, Delta]]:
        """The (choice, delta) stream with the output blocklist applied, then the audit line.

        A delta that would complete a blocked pattern in its choice is not sent: that
        choice ends there with finish_reason `content_filter` (what was already sent stays
        sent) and its later deltas are dropped."""
        ticket = ctx.ticket
        if ticket is not None:
            ticket.watched = True
        n = len(group.generations)
        texts, reasons = [""] * n, [""] * n
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
                        yield index, self._filtered(delta, group, index)
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
                self.book.close_ticket(
                    ticket,
                    status=status,
                    reason=reason,
                    completion_tokens=sum(group.tokens_sent),
                    completion="\x00".join(texts),  # n > 1: the choices, NUL-separated
                    finish_reason=",".join(r or "aborted" for r in reasons),
                )

    def _abandon(self, seq_id: int) -> None:
        settle = Settle(
            principal="", reserved_tokens=0, used_tokens=0, seq_id=seq_id, abandoned=True
        )
        try:
            self.policy.cast_nowait(settle)
        except ActorError:
            pass  # a policy actor that is down admitted nothing this one counts

    @staticmethod
    def _filtered(delta: Delta, group: GenerationGroup, index: int) -> Delta:
        return msgspec.structs.replace(
            delta,
            token_ids=[],
            text="",
            logprobs=[],
            finish_reason="content_filter",  # type: ignore[arg-type]
            prompt_tokens=group.prompt_tokens,
            completion_tokens=group.tokens_sent[index],
        )

    def ended(self, ctx: RequestContext, status: int, reason: str, tokens_sent: int = 0) -> None:
        if ctx.ticket is not None:
            self.book.end_unwatched(ctx.ticket, status, reason, tokens_sent)

    def audit(self, ctx: RequestContext, status: int) -> None:
        if not ctx.audited:
            return
        if ctx.ticket is not None:
            # An admitted generation writes its own line when its last delta is out
            # (already, for a whole JSON body); one that failed to start writes it here.
            if self.book.is_open(ctx.ticket) and status != 200:
                self.book.close_ticket(ctx.ticket, status=status, reason="backend_error")
            return
        denial = ctx.denial
        if denial is not None and not denial.audit:
            return  # one of a burst of refused bad credentials: counted, not written
        self.book.record(
            trace_id=ctx.trace_id,
            principal=ctx.principal,
            method=ctx.method,
            path=ctx.path,
            status=status,
            decision="deny" if denial is not None else "allow",
            reason=denial.code if denial is not None else "",
            latency_ms=round((trio.current_time() - ctx.started) * 1000, 3),
            prompt=ctx.prompt_text,
            client=ctx.client,
            suppressed=denial.suppressed if denial is not None else 0,
        )
