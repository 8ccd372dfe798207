"""A bounded mailbox with the counters introspection shows."""

from __future__ import annotations

from typing import Any

import trio

from ._envelope import Envelope
from ._errors import ActorUnavailable


class Mailbox:
    def __init__(self, owner: str, capacity: int) -> None:
        self.owner = owner
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[Envelope](capacity)
        self.closed = False
        self.messages_in = 0
        self.protocol: Any = None  # the owner's PayloadCodecs, when it declares a protocol

    @property
    def depth(self) -> int:
        return self._send.statistics().current_buffer_used

    async def put(self, envelope: Envelope) -> None:
        if self.closed:
            raise ActorUnavailable(self.owner, "stopping")
        try:
            await self._send.send(envelope)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorUnavailable(self.owner, "stopping") from None
        self.messages_in += 1

    def put_nowait(self, envelope: Envelope) -> bool:
        if self.closed:
            raise ActorUnavailable(self.owner, "stopping")
        try:
            self._send.send_nowait(envelope)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ActorUnavailable(self.owner, "stopping") from None
        self.messages_in += 1
        return True

    async def get(self) -> Envelope:
        """Next envelope; trio.EndOfChannel once closed and drained."""
        return await self._receive.receive()

    def close(self) -> None:
        """Refuse new messages; what is queued can still be drained."""
        self.closed = True
        self._send.close()

    def fail_pending(self, error: BaseException) -> int:
        """Answer every queued request with `error` (never leave a caller hanging)."""
        self.close()
        failed = 0
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            envelope.fail(error)
            failed += 1
        self._receive.close()
        return failed
