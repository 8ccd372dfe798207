"""Failed authentications per client address: a bucket each, so denials cannot fill the disk.

Every 401 is an audit line. Without a bound, a client sending bad credentials as fast as
it can writes the audit log full at the speed of its connection. So each client address
gets a bucket of `per_minute` failures, refilled continuously; past it, a failure is
answered 429 with Retry-After instead of 401, and only the first 429 of such a lockout
is written. The refusals not written are counted, and the count goes into the next line
written for that address (`suppressed`), so the log still says how many there were.

Valid credentials are never throttled: a neighbour behind the same NAT address as an
attacker still gets in (authentication is cheap: a hash lookup, or a signature check
against a cached JWKS whose refetches are rate-limited on their own).

Addresses: IPv4 as they are, IPv6 by /64 (one host usually holds a whole /64, so single
addresses would give it 2^64 buckets). At most `max_addresses` are tracked, the least
recently failing forgotten first, so memory stays bounded whatever the number of
addresses; a client that controls more addresses than that can evade the limit (the
per-address bound is against one client, not a botnet).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass

from .limits import TokenBucket

MAX_ADDRESSES = 10_000


@dataclass(frozen=True)
class Verdict:
    """What one more failure from an address gets."""

    throttled: bool
    """Over the limit: answer 429 instead of 401."""
    retry_after_s: int = 0
    audit: bool = True
    """Write this denial's audit line (only the first 429 of a lockout is written)."""
    suppressed: int = 0
    """Refusals from this address not written since its last line."""


@dataclass
class _Address:
    bucket: TokenBucket
    locked: bool = False
    quiet: int = 0


def address_key(address: str) -> str:
    """The bucket an address counts in: IPv6 by its /64, anything else as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # without an IPv6 zone
    except ValueError:
        return address[:64]  # not an IP (a unix socket's peer: ""): one bucket per name
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AuthFailures:
    """The failure buckets of every client address. `clock` is monotonic seconds."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float], max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.max_addresses = max_addresses
        self._addresses: dict[str, _Address] = {}  # least recently failing first

    def __len__(self) -> int:
        return len(self._addresses)

    def failed(self, address: str) -> Verdict:
        """Count one failed authentication from `address`."""
        key, now = address_key(address), self.clock()
        entry = self._addresses.pop(key, None)
        if entry is None:
            if len(self._addresses) >= self.max_addresses:
                del self._addresses[next(iter(self._addresses))]
            entry = _Address(TokenBucket(self.per_minute, self.per_minute, now))
        self._addresses[key] = entry  # now the most recent
        wait = entry.bucket.wait_s(1, now)
        if wait <= 0:
            entry.bucket.take(1)
            suppressed, entry.quiet, entry.locked = entry.quiet, 0, False
            return Verdict(throttled=False, suppressed=suppressed)
        retry_after = max(1, math.ceil(wait))
        if not entry.locked:
            entry.locked = True
            suppressed, entry.quiet = entry.quiet, 0
            return Verdict(throttled=True, retry_after_s=retry_after, suppressed=suppressed)
        entry.quiet += 1
        return Verdict(throttled=True, retry_after_s=retry_after, audit=False)
