"""The policy decisions, as plain async methods (the actor only routes messages here).

Order of checks for a generation, cheapest and most certain first: who is it (401; 429
past the failures allowed per client address), may it generate, this model, these
max_tokens and this priority (403), is the prompt blocked (403), is it over its
concurrent generations (429) or its token rate (429, nothing reserved), does OPA agree
(403, or 503/allow when OPA is unreachable, as configured; the reservation is given back
on a denial). Only then is the generation counted as running (policy/concurrency.py),
with no checkpoint between that last check and the count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from .admin_ops import run_admin
from .audit import sha256
from .concurrency import Concurrency
from .failures import AuthFailures
from .guardrails import Blocklist, OPAClient
from .keys import CredentialError, key_id, matches, parse_authorization
from .limits import RateLimiter, Refusal, resolve
from .messages import Access, Admin, Authorize, Decision, Settle
from .oidc import OIDCVerifier, TokenError
from .records import Grant, Limit, Permission, StoreData, merge
from .store import PolicyStore, PolicyStoreError, stamp

log = logging.getLogger("inferflux.policy")

ANONYMOUS_PERMISSIONS: list[Permission] = ["generate", "models:read"]


@dataclass(frozen=True)
class Principal:
    id: str
    grant: Grant
    roles: list[str] = field(default_factory=list)


def deny(status: int, reason: str, code: str, **extra: Any) -> Decision:
    return Decision(allowed=False, status=status, reason=reason, code=code, **extra)


def priority_denial(priority: int, ceiling: int, principal: str) -> Decision | None:
    """403 for a priority above the principal's ceiling: priority preempts other callers'
    work, so asking for more than the default (0) needs a grant."""
    if priority <= ceiling:
        return None
    return deny(
        403,
        f"priority {priority} is above the ceiling of {ceiling} for {principal}",
        "priority_not_allowed",
        param="priority",
        principal=principal,
    )


@dataclass
class Policy:
    auth_required: bool
    store: PolicyStore | None
    limiter: RateLimiter
    default_limit: Limit
    blocklist: Blocklist
    oidc: OIDCVerifier | None = None
    opa: OPAClient | None = None
    opa_include_prompt: bool = False
    anonymous_max_priority: int = 0
    """The priority ceiling of `anonymous` (every caller while auth is off)."""
    failures: AuthFailures | None = None
    """Failed authentications per client address (None: not limited)."""
    concurrency: Concurrency = field(default_factory=Concurrency)
    store_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def data(self) -> StoreData:
        return self.store.data if self.store is not None else StoreData()

    # -- who is it -----------------------------------------------------------------
    async def authenticate(self, credential: str, force: bool = False) -> Principal | Decision:
        if not self.auth_required and not force:
            grant = Grant(
                permissions=ANONYMOUS_PERMISSIONS, max_priority=self.anonymous_max_priority
            )
            return Principal("anonymous", grant)
        try:
            token = parse_authorization(credential)
        except CredentialError as exc:
            return deny(401, str(exc), "invalid_authorization")
        if not token:
            return deny(
                401,
                "missing credentials: send `Authorization: Bearer <API key or token>`",
                "missing_api_key",
            )
        kid = key_id(token)
        if kid is not None or self.oidc is None:
            record = self.data.keys.get(kid or "")
            if record is None or not matches(token, record):
                return deny(401, "invalid API key", "invalid_api_key")
            if record.revoked_at is not None:
                return deny(401, "this API key was revoked", "revoked_api_key")
            return Principal(record.principal, record.grant)
        try:
            identity = await self.oidc.verify(token)
        except TokenError as exc:
            return deny(401, f"invalid token: {exc}", "invalid_token")
        roles = [r for r in identity.roles if r in self.data.roles]
        grant = merge([self.data.roles[r] for r in roles])
        return Principal(f"oidc:{identity.subject}", grant, roles)

    async def identify(
        self, credential: str, client: str, force: bool = False
    ) -> Principal | Decision:
        """`authenticate`, with failures counted per client address: past the limit a
        failure is a 429 (policy/failures.py), so bad credentials cannot fill the audit
        log. Valid credentials are never throttled."""
        who = await self.authenticate(credential, force)
        if not isinstance(who, Decision) or who.status != 401 or self.failures is None:
            return who
        verdict = self.failures.failed(client)
        if not verdict.throttled:
            return msgspec.structs.replace(who, suppressed=verdict.suppressed)
        return deny(
            429,
            "too many failed authentications from this address; retry after "
            f"{verdict.retry_after_s} s with valid credentials",
            "too_many_auth_failures",
            retry_after_s=verdict.retry_after_s,
            audit=verdict.audit,
            suppressed=verdict.suppressed,
        )

    def _limit(self, principal: Principal) -> Limit:
        return resolve(self.data.limits, principal.id, principal.roles, self.default_limit)

    @staticmethod
    def _over(refusal: Refusal, principal: str) -> Decision:
        return deny(
            429,
            refusal.message,
            "rate_limit_exceeded",
            param=refusal.limit,
            retry_after_s=refusal.retry_after_s,
            principal=principal,
        )

    @staticmethod
    def _missing(principal: Principal, permission: str) -> Decision:
        return deny(
            403,
            f"{principal.id} lacks the permission {permission!r}",
            "permission_denied",
            principal=principal.id,
        )

    # -- requests --------------------------------------------------------------------
    async def access(self, message: Access) -> Decision:
        """A protected HTTP request: authenticated, holds `permission`, within its request
        rate (every protected request counts one)."""
        who = await self.identify(message.credential, message.client, message.always_authenticate)
        if isinstance(who, Decision):
            return who
        if message.permission not in who.grant.permissions:
            return self._missing(who, message.permission)
        refusal = self.limiter.admit_request(who.id, self._limit(who))
        if refusal is not None:
            return self._over(refusal, who.id)
        return Decision(allowed=True, principal=who.id)

    async def authorize(self, message: Authorize) -> Decision:
        who = await self.identify(message.credential, message.client)
        if isinstance(who, Decision):
            return who
        grant, pid = who.grant, who.id
        if "generate" not in grant.permissions:
            return self._missing(who, "generate")
        if not grant.allows_model(message.model):
            return deny(
                403,
                f"{pid} may not use model {message.model!r}",
                "model_not_allowed",
                param="model",
                principal=pid,
            )
        ceiling = grant.max_tokens
        if ceiling is not None and message.max_tokens is not None and message.max_tokens > ceiling:
            return deny(
                403,
                f"max_tokens {message.max_tokens} is above the ceiling of {ceiling} for {pid}",
                "max_tokens_exceeded",
                param="max_tokens",
                principal=pid,
            )
        refused = priority_denial(message.priority, grant.priority_ceiling, pid)
        if refused is not None:
            return refused
        if self.blocklist and message.prompt and self.blocklist.first_match(message.prompt):
            return deny(
                403, "the prompt contains blocked content", "content_blocked", principal=pid
            )
        limit, choices = self._limit(who), max(1, message.choices)
        refused = self._over_concurrency(grant, pid, choices)
        if refused is not None:
            return refused
        completion = message.max_tokens
        if completion is None:
            completion = message.room if ceiling is None else min(message.room, ceiling)
            # A request that sets no max_tokens is clamped to what the token rate can
            # ever hold, rather than refused forever for the context window it did not ask for.
            fits = (limit.tokens_per_minute or 0) - message.prompt_tokens
            if limit.tokens_per_minute and 1 <= fits // choices < completion:
                completion = ceiling = fits // choices
        reserved = message.prompt_tokens + completion * choices
        refusal = self.limiter.admit_tokens(pid, limit, reserved)
        if refusal is not None and refusal.never:
            # No wait will ever let it pass: a 429 would only make SDKs retry it.
            return deny(
                400, refusal.message, "tokens_exceed_limit", param="max_tokens", principal=pid
            )
        if refusal is not None:
            return self._over(refusal, pid)
        if self.opa is not None:
            verdict = await self.opa.ask(self._opa_input(message, who))
            if not verdict.allowed:
                self.limiter.give_back_tokens(pid, reserved)
                if verdict.unavailable:
                    return deny(
                        503,
                        verdict.reason,
                        "policy_unavailable",
                        retry_after_s=2,
                        principal=pid,
                    )
                reason = verdict.reason or "denied by policy"
                return deny(403, f"denied by policy: {reason}", "policy_denied", principal=pid)
            # OPA was a checkpoint: others may have started generations meanwhile.
            refused = self._over_concurrency(grant, pid, choices)
            if refused is not None:
                self.limiter.give_back_tokens(pid, reserved)
                return refused
        if not self.concurrency.take(message.seq_id, pid, choices):
            self.limiter.give_back_tokens(pid, reserved)  # nobody waits for this answer
            return deny(503, "the request was abandoned", "abandoned", principal=pid)
        return Decision(allowed=True, principal=pid, max_tokens=ceiling, reserved_tokens=reserved)

    def _over_concurrency(self, grant: Grant, pid: str, choices: int) -> Decision | None:
        """429 while `pid` runs max_concurrent generations (400 for an n that never fits)."""
        most = grant.max_concurrent
        if most is None:
            return None
        if choices > most:
            return deny(
                400,
                f"n={choices} generations at once is more than the {most} allowed for {pid}; "
                "lower n",
                "concurrency_exceeds_limit",
                param="n",
                principal=pid,
            )
        running = self.concurrency.running(pid)
        if running + choices <= most:
            return None
        return deny(
            429,
            f"{pid} runs {running} generations, its limit of {most} at once; retry when one ends",
            "concurrency_limit_exceeded",
            param="max_concurrent",
            retry_after_s=1,
            principal=pid,
        )

    def _opa_input(self, message: Authorize, who: Principal) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "principal": who.id,
            "roles": who.roles,
            "permissions": list(who.grant.permissions),
            "model": message.model,
            "path": message.path,
            "prompt_tokens": message.prompt_tokens,
            "max_tokens": message.max_tokens,
            "priority": message.priority,
            "prompt_sha256": sha256(message.prompt),
        }
        if self.opa_include_prompt:
            facts["prompt"] = message.prompt
        return facts

    def settle(self, message: Settle) -> None:
        if message.abandoned:
            self.concurrency.abandon(message.seq_id)
            return
        self.limiter.give_back_tokens(
            message.principal, message.reserved_tokens - message.used_tokens
        )
        self.concurrency.release(message.seq_id)

    # -- the store -------------------------------------------------------------------
    async def reload_if_changed(self) -> None:
        """Pick up changes `inferflux keys` made to the file; a file that no longer
        decrypts is logged and the last good data kept."""
        store = self.store
        if store is None:
            return
        async with self.store_lock:
            if not store.changed_on_disk():
                return
            try:
                await trio.to_thread.run_sync(store.reload)
            except Exception as exc:  # PolicyStoreError, or a surprise: never lose the data
                store.stamp = stamp(store.path)  # say it once per change, not once per poll
                reason = str(exc) if isinstance(exc, PolicyStoreError) else repr(exc)
                log.error(
                    "policy store changed on disk but cannot be read; keeping the last good "
                    "version: %s",
                    reason,
                )
                return
        log.info("policy store reloaded from %s", store.path)

    async def admin(self, message: Admin) -> Decision:
        who = await self.identify(message.credential, message.client, force=True)
        if isinstance(who, Decision):
            return who
        if "admin" not in who.grant.permissions:
            return self._missing(who, "admin")
        return await run_admin(self.store, self.store_lock, message, who.id)
