"""One request's state, from its first hook to its last, and its W3C trace context."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio
from quart import g, has_request_context, request

from ..policy.messages import Decision
from .tickets import Ticket

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def trace_from(header: str) -> tuple[str, str]:
    """(trace id, caller's span id) of a valid W3C traceparent, else a fresh trace id and
    no parent (all-zero ids are invalid by the spec)."""
    match = _TRACEPARENT.fullmatch(header.strip().lower())
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        return match.group(1), match.group(2)
    return secrets.token_hex(16), ""


def client_address() -> str:
    """The HTTP peer's address (the connection's, so a proxy's when behind one; headers
    such as X-Forwarded-For are not trusted); "" outside a request or over a unix socket."""
    return (request.remote_addr or "") if has_request_context() else ""


@dataclass
class RequestContext:
    """One request, from the first hook to the last (`current()` in a handler)."""

    method: str
    path: str
    credential: str
    """The Authorization header as sent: only the policy actor parses it."""
    trace_id: str
    parent_span: str
    """The caller's span id from `traceparent` ("" when it sent none)."""
    started: float = field(default_factory=trio.current_time)
    span_id: str = ""
    """Our span, when a tracer exports one (returned in `traceparent`)."""
    principal: str = "anonymous"
    audited: bool = False
    """A protected path: an audit line is due when the response goes out."""
    denial: Decision | None = None
    ticket: Ticket | None = None
    """An admitted generation's audit ticket."""
    prompt_text: str | None = None
    """The prompt as the model sees it, when a guardrail or the audit needs the text."""
    client: str = field(default_factory=client_address)
    """The HTTP peer's address (failed authentications are limited per address)."""


def credential(headers: Mapping[str, str]) -> str:
    """The credential as sent: the Authorization header, or Anthropic's `x-api-key` (its
    SDKs send the key there) as a bearer token."""
    authorization = headers.get("authorization", "")
    if not authorization and headers.get("x-api-key"):
        return f"Bearer {headers['x-api-key']}"
    return authorization


def current() -> RequestContext:
    """The context of the request being handled (set by the app's first hook)."""
    return g.context
