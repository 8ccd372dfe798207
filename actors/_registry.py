"""Names to running mailboxes, and ActorRef: an address that outlives restarts.

A ref looks its actor up on every send, so a restarted actor (a new mailbox) is reached
through the same ref. While an actor is down the lookup fails fast with ActorUnavailable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from ._envelope import Envelope, ReplyItem
from ._errors import ActorUnavailable, CallTimeout, MailboxFull
from ._mailbox import Mailbox

DEFAULT_SEND_TIMEOUT_S = 5.0


def _wire_check_default() -> bool:
    return os.environ.get("ACTORS_WIRE_CHECK", "") not in ("", "0")


class Registry:
    """Names to mailboxes. `wire_check` (default: $ACTORS_WIRE_CHECK) sends every message,
    reply and refusal to an actor that declares a protocol through its codecs, as a link
    to another process would: a test mode that proves every protocol crosses a wire."""

    def __init__(self, wire_check: bool | None = None) -> None:
        self._mailboxes: dict[str, Mailbox] = {}
        self.wire_check = _wire_check_default() if wire_check is None else wire_check
        self._watchers: list[Callable[[str, bool, str], None]] = []

    def register(self, name: str, mailbox: Mailbox) -> None:
        if name in self._mailboxes and not self._mailboxes[name].closed:
            raise ValueError(f"an actor named {name!r} is already running")
        self._mailboxes[name] = mailbox
        self._tell(name, True, "")

    def unregister(self, name: str, mailbox: Mailbox, why: str = "stopped") -> None:
        if self._mailboxes.get(name) is mailbox:
            del self._mailboxes[name]
            self._tell(name, False, why)

    def watch(self, callback: Callable[[str, bool, str], None]) -> Callable[[], None]:
        """`callback(name, up, why)` whenever an actor registers (up) or leaves (down,
        with its last error); synchronous, so it must not block. Returns the unwatch."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _tell(self, name: str, up: bool, why: str) -> None:
        for watcher in list(self._watchers):
            watcher(name, up, why)

    def names(self) -> list[str]:
        """The actors running now (with `watch`, a directory that stays current)."""
        return [name for name, mailbox in self._mailboxes.items() if not mailbox.closed]

    def lookup(self, name: str) -> Mailbox:
        mailbox = self._mailboxes.get(name)
        if mailbox is None or mailbox.closed:
            raise ActorUnavailable(name, "not running (never started, stopped, or restarting)")
        return mailbox


registry = Registry()


class ActorRef:
    """Send to an actor by name: cast (no reply), call (one reply), stream (many replies)."""

    def __init__(self, name: str, in_registry: Registry | None = None) -> None:
        self.name = name
        self._registry = in_registry or registry

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    def _through_wire(self, mailbox: Mailbox, envelope: Envelope) -> Envelope:
        protocol = mailbox.protocol
        if self._registry.wire_check and protocol is not None:
            codec = protocol.messages
            envelope.message = codec.decode(codec.encode(envelope.message))
            envelope.wire = protocol
        return envelope

    async def _deliver(self, envelope: Envelope, timeout_s: float) -> None:
        mailbox = self._registry.lookup(self.name)
        envelope = self._through_wire(mailbox, envelope)
        with trio.move_on_after(timeout_s) as scope:
            await mailbox.put(envelope)
        if scope.cancelled_caught:
            raise MailboxFull(self.name, mailbox.capacity, timeout_s)

    def cast_nowait(self, message: Any) -> None:
        """Deliver now or raise (MailboxFull/ActorUnavailable); for sync code and hot paths."""
        mailbox = self._registry.lookup(self.name)
        if not mailbox.put_nowait(self._through_wire(mailbox, Envelope(message))):
            raise MailboxFull(self.name, mailbox.capacity, 0.0)

    async def cast(self, message: Any, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> None:
        await self._deliver(Envelope(message), timeout_s)

    async def call(self, message: Any, timeout_s: float = DEFAULT_SEND_TIMEOUT_S) -> Any:
        """Send and wait for the reply; the timeout covers delivery and the answer."""
        send, receive = trio.open_memory_channel[ReplyItem](1)
        with receive:
            with trio.move_on_after(timeout_s) as scope:
                await self._deliver(Envelope(message, "call", send), timeout_s)
                try:
                    kind, value = await receive.receive()
                except trio.EndOfChannel:
                    raise ActorUnavailable(self.name, "dropped the request") from None
            if scope.cancelled_caught:
                raise CallTimeout(self.name, timeout_s)
        if kind == "error":
            raise value
        return value

    @asynccontextmanager
    async def stream(
        self,
        message: Any,
        buffer: int = 1024,
        first_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """Open a stream; iterate the items; the stream's terminal error is raised."""
        send, receive = trio.open_memory_channel[ReplyItem](buffer)
        await self._deliver(Envelope(message, "stream", send), first_timeout_s)

        async def items() -> AsyncIterator[Any]:
            while True:
                try:
                    kind, value = await receive.receive()
                except trio.EndOfChannel:
                    raise ActorUnavailable(
                        self.name, "stream ended without a terminal message"
                    ) from None
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return

        with receive:
            yield items()
