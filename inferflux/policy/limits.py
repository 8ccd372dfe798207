"""Rate limits per principal: requests per minute and tokens per minute, as token buckets.

The buckets live in the one policy actor that every ingress request passes through, so a
limit holds across all ingress connections and workers of a server (there is no second
copy to disagree with). They are memory only: a restarted policy actor starts with full
buckets, which errs on the side of serving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .records import Limit

MAX_BUCKETS = 100_000  # principals tracked at once; full buckets are dropped beyond it


@dataclass
class TokenBucket:
    """`capacity` units, refilled continuously at capacity per minute. A bucket of a
    per-minute limit may take a whole minute's worth at once, then one unit per
    60/capacity seconds."""

    capacity: float
    level: float
    updated: float

    @property
    def rate_per_s(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate_per_s)
        self.updated = max(self.updated, now)

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until `cost` units are available (0: now; inf: never, cost > capacity)."""
        self.refill(now)
        if cost > self.capacity:
            return math.inf
        return max(0.0, (cost - self.level) / self.rate_per_s)

    def take(self, cost: float) -> None:
        self.level -= cost

    def give(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def resize(self, capacity: float) -> None:
        """A changed limit keeps what was used: the level moves with the capacity."""
        self.level = min(capacity, self.level + capacity - self.capacity)
        self.capacity = capacity


@dataclass(frozen=True)
class Refusal:
    """Over a limit: which one, and after how many seconds a retry can pass."""

    limit: str
    retry_after_s: int
    message: str
    never: bool = False
    """The request needs more than the whole limit: no retry can pass (a 400, not 429)."""


class RateLimiter:
    """The buckets of every principal. `clock` is monotonic seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, principal: str, kind: str, per_minute: int) -> TokenBucket:
        bucket = self._buckets.get((principal, kind))
        now = self.clock()
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = TokenBucket(per_minute, per_minute, now)
            self._buckets[(principal, kind)] = bucket
        elif bucket.capacity != per_minute:
            bucket.refill(now)
            bucket.resize(per_minute)
        return bucket

    def _prune(self, now: float) -> None:
        """A full bucket is the same as no bucket: forget those."""
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.level >= bucket.capacity:
                del self._buckets[key]

    def admit_request(self, principal: str, limit: Limit) -> Refusal | None:
        if not limit.requests_per_minute:  # None or 0: unlimited
            return None
        bucket = self._bucket(principal, "requests", limit.requests_per_minute)
        wait = bucket.wait_s(1, self.clock())
        if wait > 0:
            return Refusal(
                "requests_per_minute",
                math.ceil(wait),
                f"rate limit of {limit.requests_per_minute} requests per minute reached "
                f"for {principal}; retry after {math.ceil(wait)} s",
            )
        bucket.take(1)
        return None

    def admit_tokens(self, principal: str, limit: Limit, tokens: int) -> Refusal | None:
        if not limit.tokens_per_minute:  # None or 0: unlimited
            return None
        bucket = self._bucket(principal, "tokens", limit.tokens_per_minute)
        wait = bucket.wait_s(tokens, self.clock())
        if math.isinf(wait):
            return Refusal(
                "tokens_per_minute",
                0,
                f"this request needs {tokens} tokens (prompt + max_tokens), more than the "
                f"limit of {limit.tokens_per_minute} tokens per minute for {principal}; "
                "lower max_tokens",
                never=True,
            )
        if wait > 0:
            return Refusal(
                "tokens_per_minute",
                math.ceil(wait),
                f"rate limit of {limit.tokens_per_minute} tokens per minute reached for "
                f"{principal}; retry after {math.ceil(wait)} s",
            )
        bucket.take(tokens)
        return None

    def give_back_tokens(self, principal: str, tokens: int) -> None:
        """Return reserved tokens a request did not use (it stopped before max_tokens)."""
        bucket = self._buckets.get((principal, "tokens"))
        if bucket is not None and tokens > 0:
            bucket.refill(self.clock())
            bucket.give(tokens)


def resolve(limits: dict[str, Limit], principal: str, roles: list[str], default: Limit) -> Limit:
    """The limit that applies, each field on its own: the principal's own entry, else the
    most generous entry of its roles that sets it, else the store's `*` entry, else the
    configured default. A field nobody sets is 0 (unlimited)."""
    own = limits.get(principal)
    by_role = [limits[f"role:{r}"] for r in roles if f"role:{r}" in limits]
    rest = [x for x in (limits.get("*"), default) if x is not None]

    def field(get: Callable[[Limit], int | None]) -> int:
        if own is not None and get(own) is not None:
            return get(own) or 0
        from_roles = [v for v in map(get, by_role) if v is not None]
        if from_roles:
            return _most(from_roles)
        for entry in rest:
            value = get(entry)
            if value is not None:
                return value
        return 0

    return Limit(
        requests_per_minute=field(lambda x: x.requests_per_minute),
        tokens_per_minute=field(lambda x: x.tokens_per_minute),
    )


def _most(values: Iterable[int]) -> int:
    """The most generous of per-minute limits, where 0 means unlimited."""
    items = list(values)
    return 0 if 0 in items else max(items)
