"""The policy actor's protocol: what the ingress sends it, and the Decision it answers.

`Access` gates every protected HTTP request (authentication, one permission, the request
rate); `Authorize` gates a generation (models, ceilings, guardrails, concurrent
generations, token rate, OPA); `Settle` gives back the tokens a finished generation
reserved but did not use, and its place among the principal's running generations. `Admin`
carries one admin operation. Every answer to Access/Authorize/Admin is a `Decision`, a
denial included: the policy refuses nothing with an error Struct. All msgspec Structs, the
same in the server's process or the policy's own (`server.isolate`).
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec


class Authorize(msgspec.Struct, tag=True, frozen=True):
    seq_id: int
    model: str
    prompt_tokens: int
    principal: str = "anonymous"
    trace_id: str = ""
    credential: str = ""
    """The raw Authorization header value; parsed by the policy actor alone."""
    max_tokens: int | None = None
    """As the client asked (None: not set; the decision may clamp it)."""
    room: int = 0
    """Tokens left in the context window after the prompt: the max_tokens of a request
    that sets none, and what it reserves against a tokens-per-minute limit."""
    priority: int = 0
    choices: int = 1
    """`n`: completions generated for the one prompt (each may use max_tokens)."""
    prompt: str = ""
    """The prompt as the model sees it, for the blocklist, OPA and the audit hash; empty
    when no guardrail needs it."""
    path: str = ""
    client: str = ""
    """The HTTP peer's address: failed authentications are limited per address."""


class Access(msgspec.Struct, tag=True, frozen=True, kw_only=True):
    credential: str
    permission: str
    path: str
    trace_id: str = ""
    always_authenticate: bool = False
    """Check the credential even with auth off (the admin API is never open)."""
    client: str = ""
    """The HTTP peer's address: failed authentications are limited per address."""


class Settle(msgspec.Struct, tag=True, frozen=True, kw_only=True):
    principal: str
    reserved_tokens: int
    used_tokens: int
    seq_id: int = 0
    """The generation that ended: its count against max_concurrent is given back."""
    abandoned: bool = False
    """The ingress never heard the Authorize answer for seq_id (it timed out or was
    cancelled): whatever it admitted is given back (policy/concurrency.py)."""


AdminOp = Literal[
    "keys.create",
    "keys.list",
    "keys.revoke",
    "roles.list",
    "roles.put",
    "roles.delete",
    "limits.list",
    "limits.put",
    "limits.delete",
]


class Admin(msgspec.Struct, tag=True, frozen=True, kw_only=True):
    credential: str
    op: AdminOp
    name: str = ""
    """The key id, role name or limit principal the operation is about."""
    body: Any = None
    """The decoded JSON body of create/put operations (validated by the actor)."""
    trace_id: str = ""
    client: str = ""
    """The HTTP peer's address: failed authentications are limited per address."""


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    reason: str = ""
    status: int = 200
    """HTTP status of a denial: 401 (who are you), 403 (not allowed), 429 (over a limit),
    400/404/409 for a bad admin request, 503 (a dependency that fails closed)."""
    code: str = ""
    param: str | None = None
    retry_after_s: int | None = None
    principal: str = "anonymous"
    max_tokens: int | None = None
    """The ceiling to apply to a request that set no max_tokens."""
    reserved_tokens: int = 0
    """Reserved against the principal's tokens-per-minute bucket (given back by Settle)."""
    result: Any = None
    """The answer of an admin operation."""
    audit: bool = True
    """False: one of a burst of refused failed authentications already on record (only
    the first of a lockout is written; policy/failures.py)."""
    suppressed: int = 0
    """Refusals from the same address not written since its last audit line."""


PolicyMessage = Union[Authorize, Access, Settle, Admin]
