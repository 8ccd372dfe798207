"""A process actor's child reaching actors of its parent by name ("imports").

An actor moved into its own process still talks to the actors it talked to before (the
scheduler to its model worker, for example) through `ActorRef(name)`: the child's registry
holds a `ParentMailbox` for each name the parent lets it import, and putting an envelope
there sends an `Ask` frame up the same link the parent uses to reach the child. The
parent serves it from its own registry exactly as a node link serves a peer
(`PeerRequests`, actors/_node_serve.py): decoded in the target's protocol, answered with
Item / Done / Fail / Refused frames, which in this direction can only be answers to the
child's asks.

Casts keep their order: every ask goes through one bounded queue and one sender task
(a task per cast, as on a node link, could reorder an Admit and the Cancel after it).
A call in flight when the link goes away is not answered here: the child exits with its
parent (it watches its stdin), and the parent answers its own callers.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import trio

from transports import Channel, MessageDecodeError

from ._envelope import Envelope
from ._errors import ActorUnavailable, RemoteError
from ._link import Ask, Done, Fail, Item, PayloadCodecs, Refused, import_target
from ._node_serve import PeerRequests
from ._node_wire import failure, refusal
from ._registry import Registry

ASK_QUEUE = 4096  # asks waiting for the link, child side


class ParentAsks:
    """The child's side: asks queued in order, their answers matched by correlation id."""

    def __init__(self, channel: Channel[Any]) -> None:
        self.channel = channel
        self._ids = itertools.count(1)
        self._opened = trio.Event()
        self._pending: dict[int, tuple[Envelope, PayloadCodecs, str]] = {}
        self._send, self._receive = trio.open_memory_channel[tuple[str, PayloadCodecs, Envelope]](
            ASK_QUEUE
        )

    def register(self, registry: Registry, imports: dict[str, str]) -> None:
        """`imports`: name -> the class (pkg.module:Class) whose protocol it speaks."""
        for name, target in imports.items():
            mailbox = ParentMailbox(name, self, PayloadCodecs(import_target(target)))
            registry.register(name, mailbox)  # type: ignore[arg-type]

    def open(self) -> None:
        """The parent has our Hello: asks may go (the first frame must be the Hello)."""
        self._opened.set()

    async def run(self) -> None:
        """Send the queued asks, one at a time, in order, once open."""
        await self._opened.wait()
        async for name, protocol, envelope in self._receive:
            correlation_id = next(self._ids)
            payload = msgspec.Raw(protocol.messages.encode(envelope.message))
            if envelope.kind != "cast":
                self._pending[correlation_id] = (envelope, protocol, name)
            await self.channel.send(Ask(correlation_id, name, payload, envelope.kind))

    async def put(self, name: str, protocol: PayloadCodecs, envelope: Envelope) -> None:
        await self._send.send((name, protocol, envelope))

    def put_nowait(self, name: str, protocol: PayloadCodecs, envelope: Envelope) -> bool:
        try:
            self._send.send_nowait((name, protocol, envelope))
        except trio.WouldBlock:
            return False
        return True

    def answer(self, frame: Item | Done | Fail | Refused, peer: str = "parent") -> None:
        """An answer from the parent to one of our asks; one that does not decode fails
        its ask (a bad reply is no reason to take the whole process down)."""
        try:
            self._answer(frame, peer)
        except MessageDecodeError as exc:
            entry = self._pending.pop(frame.correlation_id, None)
            if entry is not None:
                entry[0].fail(RemoteError(entry[2], "BadReply", str(exc)))

    def _answer(self, frame: Item | Done | Fail | Refused, peer: str) -> None:
        match frame:
            case Item(correlation_id, payload):
                entry = self._pending.get(correlation_id)
                if entry is not None:
                    entry[0].send(entry[1].replies.decode(payload, peer))
            case Done(correlation_id, payload):
                entry = self._pending.pop(correlation_id, None)
                if entry is not None:
                    entry[0].reply(entry[1].replies.decode(payload, peer))
            case Fail(correlation_id, kind, message):
                entry = self._pending.pop(correlation_id, None)
                if entry is not None:
                    entry[0].fail(failure(entry[2], kind, message))
            case Refused(correlation_id, payload):
                entry = self._pending.pop(correlation_id, None)
                if entry is not None:
                    entry[0].fail(refusal(entry[1], entry[2], payload))


class ParentMailbox:
    """What the child's ActorRef finds for an imported name."""

    remote = True  # served to nobody else
    closed = False
    depth = 0

    def __init__(self, name: str, asks: ParentAsks, protocol: PayloadCodecs) -> None:
        self.owner, self.asks, self.protocol = name, asks, protocol
        self.capacity = ASK_QUEUE
        self.messages_in = 0

    async def put(self, envelope: Envelope) -> None:
        await self.asks.put(self.owner, self.protocol, envelope)
        self.messages_in += 1

    def put_nowait(self, envelope: Envelope) -> bool:
        queued = self.asks.put_nowait(self.owner, self.protocol, envelope)
        self.messages_in += queued
        return queued


class ChildAsks:
    """The parent's side: what PeerRequests needs of a link, for one child's asks, and
    the names that child may reach (anything else is refused as not running)."""

    up = True
    down_after_s = 5.0
    max_in_flight = 10_000

    def __init__(
        self,
        name: str,
        registry: Registry,
        channel: Channel[Any],
        nursery: trio.Nursery,
        allowed: set[str],
    ) -> None:
        self.registry, self.channel, self._nursery = registry, channel, nursery
        self.peer = f"process actor {name!r}"
        self.allowed = allowed
        self.requests = PeerRequests(self)

    @property
    def nursery(self) -> trio.Nursery:
        return self._nursery

    def serve(self, ask: Ask) -> None:
        if ask.target not in self.allowed:
            why = ActorUnavailable(ask.target, f"not imported by {self.peer}")
            self._nursery.start_soon(self.requests._send_fail, ask.correlation_id, why)
            return
        self.requests.serve(ask)  # type: ignore[arg-type]  # same fields as a node Ask
