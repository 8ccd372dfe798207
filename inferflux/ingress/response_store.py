"""Stored responses of the Responses API (`store: true`): what `GET /v1/responses/{id}`
returns and what `previous_response_id` continues.

Bounded three ways, so no client can grow it without limit: responses live `ttl_s`, a
principal keeps at most `max_per_principal` (the oldest go first), and all of them
together stay under `max_bytes` (the oldest overall go first). A principal sees only its
own: another's id is "not found", exactly like an unknown one. The store lives in the
server's memory: a restart forgets it (docs/agent-apis.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .request_types import ChatMessage


@dataclass(frozen=True)
class StoredResponse:
    principal: str
    body: bytes
    """The response object as JSON, as it was sent."""
    conversation: list[ChatMessage]
    """Input and output so far (without instructions, which do not carry over)."""
    size: int
    expires_at: float


class ResponseStore:
    def __init__(
        self,
        *,
        ttl_s: float = 3600.0,
        max_per_principal: int = 100,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_per_principal = max_per_principal
        self.max_bytes = max_bytes
        self.clock = clock
        self._all: OrderedDict[str, StoredResponse] = OrderedDict()  # oldest first
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._all)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def put(
        self, principal: str, response_id: str, body: bytes, conversation: list[ChatMessage]
    ) -> None:
        size = len(body) + sum(
            len(m.text()) + 64 + sum(len(p.image_url.url) for _, p in m.images())
            for m in conversation
        )
        if size > self.max_bytes:
            return  # larger than the whole store: not kept (GET answers 404)
        self._expire()
        self._drop(response_id)
        mine = [rid for rid, stored in self._all.items() if stored.principal == principal]
        for rid in mine[: max(0, len(mine) - self.max_per_principal + 1)]:
            self._drop(rid)
        while self._all and self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._all)))
        expires_at = self.clock() + self.ttl_s
        self._all[response_id] = StoredResponse(principal, body, conversation, size, expires_at)
        self._bytes += size

    def get(self, principal: str, response_id: str) -> StoredResponse | None:
        self._expire()
        stored = self._all.get(response_id)
        if stored is None or stored.principal != principal:
            return None
        return stored

    def delete(self, principal: str, response_id: str) -> bool:
        if self.get(principal, response_id) is None:
            return False
        self._drop(response_id)
        return True

    def _expire(self) -> None:
        now = self.clock()
        # Insertion order is expiry order (one TTL for all), so stop at the first live one.
        while self._all:
            rid, stored = next(iter(self._all.items()))
            if stored.expires_at > now:
                return
            self._drop(rid)

    def _drop(self, response_id: str) -> None:
        stored = self._all.pop(response_id, None)
        if stored is not None:
            self._bytes -= stored.size
