"""Asking the policy actor, and its denials as HTTP errors.

The credential travels to the policy actor raw (the Authorization header value): parsing
and checking it happen in one place. Open paths (no permission): /livez, /readyz,
/healthz, /metrics, /debug/actors, anything outside /v1, /tokenize, /detokenize.
"""

from __future__ import annotations

from typing import Any

import trio

from actors import ActorError, ActorRef, CallTimeout

from ..policy.messages import Decision
from .errors import APIError

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
