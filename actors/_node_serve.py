"""A node link's serving side: the peer's requests to our actors, and its monitors of them.

A request from the peer is looked up in our registry, decoded in the target's protocol,
put in its mailbox and its answers relayed back, each in its own task, at most
`max_in_flight` at once (more are refused with MailboxFull rather than queued without
bound). A Watch makes us tell the peer whenever that actor registers or leaves our
registry (ActorState frames), and again whenever the link comes up; see actors/_monitor.py.

A request's answers go back over the channel it came on: after a rejoin
(NodeLink.replace_channel) a request from the old channel must not be answered over the
new one, where its correlation id may belong to another request of the restarted peer.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
import trio

from transports import Channel, ChannelClosed, MessageDecodeError, SendTimeout

from ._envelope import Envelope, ReplyItem
from ._errors import ActorUnavailable, MailboxFull
from ._link import Done, Item, PayloadCodecs
from ._monitor import ActorState
from ._node_wire import Ask, NodeFrame, fail_frame, send_frame
from ._registry import Registry


class Link(Protocol):
    """What the serving side needs of its NodeLink."""

    registry: Registry
    channel: Channel[Any]
    peer: str
    up: bool
    down_after_s: float
    max_in_flight: int

    @property
    def nursery(self) -> trio.Nursery: ...


class PeerRequests:
    def __init__(self, link: Link) -> None:
        self.link = link
        self.served = 0  # requests taken from the peer, for introspection
        self.in_flight = 0
        self.watched: set[str] = set()  # names the peer monitors

    # monitors the peer holds on our actors ------------------------------------------------
    def watch(self, name: str) -> None:
        self.watched.add(name)
        self.local_actor_changed(name, *self._local_state(name))

    def peer_up(self) -> None:
        """The link came up: tell the peer the state of every actor it watches. The peer
        sends its Watch frames when it hears our Hello, which can be before its own Hello
        reaches us (a new link, a rejoin): such a Watch finds the link still down here,
        unanswered until now. Changes while the link was down were not told either.
        Names are kept across the peer's restarts: a stale one costs an ActorState frame
        that the peer ignores."""
        for name in self.watched:
            self.local_actor_changed(name, *self._local_state(name))

    def _local_state(self, name: str) -> tuple[bool, str]:
        try:
            mailbox = self.link.registry.lookup(name)
        except ActorUnavailable:
            return False, "not running"
        if getattr(mailbox, "remote", False):
            return False, "not served to other nodes"
        return True, ""

    def local_actor_changed(self, name: str, up: bool, why: str) -> None:
        """From our Registry (or a new Watch): tell the peer, if it watches `name`."""
        if name in self.watched and self.link.up:
            self.link.nursery.start_soon(self.send_quietly, ActorState(name, up, why[:500]))

    async def send_quietly(self, frame: NodeFrame) -> None:
        try:
            await send_frame(self.link.channel, frame, timeout_s=self.link.down_after_s)
        except (SendTimeout, ChannelClosed):
            pass  # the link is going down; the watchdog tells whoever watches it

    # requests -----------------------------------------------------------------------------
    def serve(self, ask: Ask) -> None:
        """`ask` has just come over `link.channel`: its answers go back over that one."""
        self.served += 1
        nursery, channel, cid = self.link.nursery, self.link.channel, ask.correlation_id
        if ask.kind != "cast" and self.in_flight >= self.link.max_in_flight:
            why = MailboxFull(ask.target, self.link.max_in_flight, 0.0)
            nursery.start_soon(self._send_fail, channel, cid, why)
            return
        try:
            mailbox = self.link.registry.lookup(ask.target)
        except ActorUnavailable as exc:
            nursery.start_soon(self._send_fail, channel, cid, exc)
            return
        protocol: PayloadCodecs | None = mailbox.protocol
        if protocol is None or getattr(mailbox, "remote", False):
            why = ActorUnavailable(ask.target, "not served to other nodes")
            nursery.start_soon(self._send_fail, channel, cid, why)
            return
        try:
            message = protocol.messages.decode(ask.payload, self.link.peer)
        except MessageDecodeError as exc:
            nursery.start_soon(self._send_fail, channel, cid, exc)
            return
        if ask.kind == "cast":
            try:
                mailbox.put_nowait(Envelope(message))
            except ActorUnavailable:
                pass  # a cast to an actor that is stopping is lost, as it would be here
            return
        send, receive = trio.open_memory_channel[ReplyItem](100_000)
        envelope = Envelope(message, ask.kind, send, ask.correlation_id)
        nursery.start_soon(self._deliver_and_relay, channel, mailbox, envelope, receive, protocol)

    async def _deliver_and_relay(
        self,
        channel: Channel[Any],
        mailbox: Any,
        envelope: Envelope,
        replies: trio.MemoryReceiveChannel[ReplyItem],
        protocol: PayloadCodecs,
    ) -> None:
        self.in_flight += 1
        try:
            await self._relay(channel, mailbox, envelope, replies, protocol)
        finally:
            self.in_flight -= 1

    async def _relay(
        self,
        channel: Channel[Any],
        mailbox: Any,
        envelope: Envelope,
        replies: trio.MemoryReceiveChannel[ReplyItem],
        protocol: PayloadCodecs,
    ) -> None:
        cid = envelope.correlation_id
        try:
            await mailbox.put(envelope)
        except ActorUnavailable as exc:
            await self._send_fail(channel, cid, exc)
            return
        async with replies:
            try:
                async for kind, value in replies:
                    if kind == "error":
                        await self._send_fail(channel, cid, value, protocol)
                        return
                    raw = msgspec.Raw(protocol.replies.encode(value))
                    await send_frame(channel, Item(cid, raw) if kind == "item" else Done(cid, raw))
                    if kind == "done":
                        return
            except (SendTimeout, ChannelClosed):
                return  # the peer is gone; its side fails the request by itself
        # The actor went away without a terminal answer: say so, never leave a caller.
        why = ActorUnavailable(mailbox.owner, "the request was dropped")
        await self._send_fail(channel, cid, why)

    async def _send_fail(
        self,
        channel: Channel[Any],
        cid: int,
        error: BaseException,
        protocol: PayloadCodecs | None = None,
    ) -> None:
        with trio.move_on_after(self.link.down_after_s):
            try:
                await send_frame(channel, fail_frame(cid, error, protocol))
            except (SendTimeout, ChannelClosed):
                pass
