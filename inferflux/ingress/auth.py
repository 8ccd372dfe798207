"""The HTTP side of the policy: who may call what, and one audit line per request.

`install(app, front)` adds, when a policy is configured (`front.guard`):
- a before_request check: every protected path asks the policy actor (`Access`) before
  the body is read, so an unauthenticated caller costs neither parsing nor tokenizing;
- an after_request hook that writes the audit line of every protected request, except a
  generation that was admitted: its line is written when its last delta has gone out
  (`watch`), with the completion tokens;
- the admin blueprint (/v1/admin/...).

The credential travels to the policy actor raw (the Authorization header value): parsing
and checking it happen in one place. Open paths: /livez, /readyz, /healthz, /metrics,
/debug/actors (and anything outside /v1, /tokenize, /detokenize).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from actors import ActorError, ActorRef, CallTimeout

from ..policy.messages import Access, Authorize, Decision
from .errors import APIError
from .guard import Guard, StreamBody, Ticket, end, watch

if TYPE_CHECKING:
    from .app import Frontend

__all__ = [
    "Guard",
    "StreamBody",
    "admit",
    "ask_policy",
    "authorize_request",
    "end",
    "install",
    "watch",
]

log = logging.getLogger("inferflux.ingress")

POLICY_RETRY_WINDOW_S = 5.0  # how long a request waits for a restarting policy actor
POLICY_CALL_TIMEOUT_S = 5.0  # one decision (a JWKS fetch or an OPA call take less)

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


def required_permission(path: str) -> str | None:
    """The permission a path needs; None: open. Unknown /v1 paths need `generate`, so a
    new endpoint is protected until someone decides otherwise."""
    if path == "/v1/admin" or path.startswith("/v1/admin/"):
        return "admin"
    if path == "/v1/models" or path.startswith("/v1/models/"):
        return "models:read"
    if path.startswith("/v1/") or path in ("/tokenize", "/detokenize"):
        return "generate"
    return None


class PolicyError(APIError):
    """A denial in OpenAI's error shape; 401s say how to authenticate."""

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self.status == 401:
            headers["www-authenticate"] = 'Bearer realm="inferflux"'
        return headers


def api_error(decision: Decision) -> APIError:
    return PolicyError(
        decision.status,
        decision.reason or "denied",
        type=_ERROR_TYPES.get(decision.status, "invalid_request_error"),
        param=decision.param,
        code=decision.code or None,
        retry_after_s=decision.retry_after_s,
    )


async def ask_policy(policy: ActorRef, message: Any) -> Decision:
    """Call the policy actor, retrying while it restarts (a crashed actor's decision was
    never given, and a restarted one has fresh buckets: nothing is charged twice). A
    timeout is not retried: the actor may still be deciding, and would then charge the
    request's rate and tokens a second time, the first charge never settled."""
    deadline = trio.current_time() + POLICY_RETRY_WINDOW_S
    while True:
        try:
            return await policy.call(message, timeout_s=POLICY_CALL_TIMEOUT_S)
        except CallTimeout:
            raise APIError(
                503,
                "policy check timed out",
                type="service_unavailable",
                code="policy_timeout",
                retry_after_s=2,
            ) from None
        except ActorError as exc:
            if trio.current_time() > deadline:
                raise APIError(
                    503, f"policy unavailable: {exc}", type="service_unavailable", retry_after_s=2
                ) from None
            await trio.sleep(0.05)


def authorize_request(
    front: Frontend,
    req: Any,
    seq_id: int,
    prompt: list[int],
    max_tokens: int | None,
    room: int,
) -> Authorize:
    """The Authorize message of a generation (in the request's context)."""
    guard = front.guard
    if guard is None:
        return Authorize(seq_id, front.model_id, len(prompt), trace_id=g.trace_id)
    logprobs = getattr(req, "logprobs", None)
    if guard.blocklist and logprobs is not None and logprobs is not False:
        # The top alternatives of each token would show what the output blocklist cuts
        # from the text: refused outright rather than filtered (nothing to get wrong).
        raise APIError(
            400,
            "logprobs are not available on this server (an output blocklist is configured)",
            param="logprobs",
            code="unsupported_parameter",
        )
    text = front.tokenizer.detokenize(prompt) if guard.needs_prompt_text else ""
    g.prompt_text = text
    return Authorize(
        seq_id,
        front.model_id,
        len(prompt),
        trace_id=g.trace_id,
        credential=request.headers.get("authorization", ""),
        max_tokens=max_tokens,
        room=room,
        priority=req.priority,
        choices=getattr(req, "n", 1) or 1,
        prompt=text,
        path=request.path,
    )


def admit(front: Frontend, message: Authorize, decision: Decision) -> Decision:
    """Act on the policy's answer: raise the denial, or open the audit ticket."""
    guard = front.guard
    if guard is None:
        return decision
    g.principal = decision.principal
    if not decision.allowed:
        g.denial = decision
        raise api_error(decision)
    ticket = Ticket(
        seq_id=message.seq_id,
        principal=decision.principal,
        trace_id=message.trace_id,
        method=request.method,
        path=request.path,
        model=message.model,
        prompt_tokens=message.prompt_tokens,
        prompt=message.prompt,
        reserved_tokens=decision.reserved_tokens,
        started=getattr(g, "policy_started", trio.current_time()),
    )
    guard.open_ticket(ticket)
    g.ticket = ticket
    return decision


def install(app: QuartTrio, front: Frontend) -> None:
    guard = front.guard
    if guard is None:
        return
    from .admin import admin_blueprint

    app.register_blueprint(admin_blueprint(guard))

    @app.before_request
    async def check_access() -> None:
        g.policy_started = trio.current_time()
        permission = required_permission(request.path)
        if permission is None or request.method == "OPTIONS":
            return
        g.audited_path = True
        decision = await ask_policy(
            guard.policy,
            Access(
                credential=request.headers.get("authorization", ""),
                permission=permission,
                path=request.path,
                trace_id=getattr(g, "trace_id", ""),
                always_authenticate=permission == "admin",
            ),
        )
        g.principal = decision.principal
        if not decision.allowed:
            g.denial = decision
            raise api_error(decision)

    @app.after_request
    async def audit_request(response: Response) -> Response:
        if not getattr(g, "audited_path", False):
            return response
        ticket: Ticket | None = getattr(g, "ticket", None)
        if ticket is not None:
            # An admitted generation writes its own line when its last delta is out
            # (already, for a whole JSON body); one that failed to start writes it here.
            if ticket.seq_id in guard.tickets and response.status_code != 200:
                guard.close_ticket(ticket, status=response.status_code, reason="backend_error")
            return response
        denial: Decision | None = getattr(g, "denial", None)
        guard.record(
            trace_id=getattr(g, "trace_id", ""),
            principal=getattr(g, "principal", "anonymous"),
            method=request.method,
            path=request.path,
            status=response.status_code,
            decision="deny" if denial is not None else "allow",
            reason=denial.code if denial is not None else "",
            latency_ms=round((trio.current_time() - g.policy_started) * 1000, 3),
            prompt=getattr(g, "prompt_text", None),
        )
        return response
