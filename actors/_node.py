"""Nodes: actors in other processes or on other hosts, reached by name like local ones.

A node is a registry and the links to its peers. A link is one transports.Channel (ipc,
tcp, or tls+tcp) carrying requests both ways: a node asks the peer's actors through a
`RemoteMailbox` registered in its own registry (so `ActorRef(name)` does not change), and
serves the peer's requests from its registry. Every message, reply and refusal travels in
the target actor's protocol (its message_type, reply_type and error_type).

Failure semantics (docs/actors.md):
- Links carry heartbeats. A peer not heard from for `down_after_s` (it died, hangs, or the
  network is partitioned) is down: every request in flight to it fails at once with
  NodeDown, new ones too, and watchers are told (`watch`). Never a hang.
- nng redials with back-off by itself; the first frame from the peer brings the link up
  again (a new Hello, a new epoch: requests of the old epoch are gone for good).
- Every receive is bounded (the channel's maximum message size), every send has a deadline.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Literal, Union

import msgspec
import trio

from transports import Channel, ChannelClosed, Codec, LinkBroken, MessageDecodeError, SendTimeout

from ._envelope import Envelope, ReplyItem
from ._errors import ActorCrashed, ActorUnavailable, Rejected, RemoteError
from ._link import Done, Fail, Item, PayloadCodecs, Refused
from ._registry import Registry

log = logging.getLogger("actors.node")

HEARTBEAT_S = 0.5
DOWN_AFTER_S = 3.0


class NodeDown(ActorUnavailable):
    """The node an actor lives on cannot be reached (dead, hung, or partitioned)."""

    def __init__(self, name: str, node: str, why: str) -> None:
        self.node = node
        super().__init__(name, f"node {node!r} is down: {why}")


class Hello(msgspec.Struct, tag="NodeHello", frozen=True, array_like=True):
    node: str
    epoch: int


class Ask(msgspec.Struct, tag=True, frozen=True, array_like=True):
    correlation_id: int
    target: str
    payload: msgspec.Raw
    kind: Literal["cast", "call", "stream"]


class Beat(msgspec.Struct, tag=True, frozen=True, array_like=True):
    pass


NodeFrame = Union[Hello, Ask, Item, Done, Fail, Refused, Beat]
node_codec: Codec[NodeFrame] = Codec(NodeFrame)


class RemoteMailbox:
    """What a local ActorRef finds for an actor on a peer node: putting an envelope sends
    it over the link; replies come back into the envelope."""

    def __init__(self, name: str, link: NodeLink, protocol: PayloadCodecs) -> None:
        self.owner, self.link, self.protocol = name, link, protocol
        self.capacity = 0  # what waits is in nng's buffers, bounded by the send deadline
        self.messages_in = 0
        self.depth = 0

    closed = False  # always "open": while the link is down, putting raises NodeDown

    async def put(self, envelope: Envelope) -> None:
        await self.link.ask(self.owner, self.protocol, envelope)
        self.messages_in += 1

    def put_nowait(self, envelope: Envelope) -> bool:
        if not self.link.up:
            raise NodeDown(self.owner, self.link.peer or "?", "not connected")
        self.link.nursery.start_soon(self._cast, envelope)  # nobody waits on a cast
        return True

    async def _cast(self, envelope: Envelope) -> None:
        try:
            await self.put(envelope)
        except ActorUnavailable as exc:
            log.warning("cast to %r dropped: %s", self.owner, exc)


class NodeLink:
    """One peer, seen from this node."""

    def __init__(
        self,
        node: str,
        registry: Registry,
        channel: Channel[Any],
        *,
        heartbeat_s: float = HEARTBEAT_S,
        down_after_s: float = DOWN_AFTER_S,
    ) -> None:
        self.node, self.registry, self.channel = node, registry, channel
        self.heartbeat_s, self.down_after_s = heartbeat_s, down_after_s
        self.peer = ""  # the peer's node name, from its Hello
        self.peer_epoch = -1
        self.up = False
        self.last_heard = -math.inf
        self.round_trip_s = 0.0
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Envelope, PayloadCodecs]] = {}
        self._watchers: list[Callable[[NodeLink, bool], None]] = []
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the link is not running"
        return self._nursery

    # imports and monitors --------------------------------------------------------------
    def import_actor(self, name: str, actor_class: Any, as_name: str | None = None) -> None:
        """Make the peer's actor `name` reachable here as `as_name` (default: `name`)."""
        protocol = PayloadCodecs(actor_class)
        self.registry.register(as_name or name, RemoteMailbox(name, self, protocol))  # type: ignore[arg-type]

    def watch(self, callback: Callable[[NodeLink, bool], None]) -> None:
        """`callback(link, up)` whenever the peer comes up or goes down."""
        self._watchers.append(callback)

    async def wait_up(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while not self.up:
                await self._changed.wait()

    async def wait_down(self) -> None:
        while self.up:
            await self._changed.wait()

    # running ---------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._beat)
            nursery.start_soon(self._watchdog)
            task_status.started()
            try:
                await self._receive_loop()
            finally:
                self._set_up(False, "link closed")
                nursery.cancel_scope.cancel()

    async def _beat(self) -> None:
        epoch = id(self) ^ int(time.monotonic() * 1e6)
        hello_sent_to = None
        while True:
            try:
                if hello_sent_to != self.peer_epoch or not self.up:
                    await self.channel.send(Hello(self.node, epoch), timeout_s=self.heartbeat_s)
                    hello_sent_to = self.peer_epoch
                await self.channel.send(Beat(), timeout_s=self.heartbeat_s)
            except (SendTimeout, ChannelClosed):
                pass  # nobody to hear it: the watchdog decides about the peer
            await trio.sleep(self.heartbeat_s)

    async def _watchdog(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s / 2)
            silent = time.monotonic() - self.last_heard
            if self.up and silent > self.down_after_s:
                self._set_up(False, f"not heard from for {silent:.1f}s")

    def _set_up(self, up: bool, why: str) -> None:
        if up == self.up:
            return
        self.up = up
        if not up:
            log.warning("node %r: peer %r is down (%s)", self.node, self.peer, why)
            pending, self._pending = self._pending, {}
            for envelope, _ in pending.values():
                envelope.fail(NodeDown(self.peer or "?", self.peer or "?", why))
        else:
            log.info("node %r: peer %r is up", self.node, self.peer)
        self._changed.set()
        self._changed = trio.Event()
        for watcher in self._watchers:
            watcher(self, up)

    async def _receive_loop(self) -> None:
        while True:
            try:
                frame = await self.channel.receive()
            except MessageDecodeError as exc:
                log.warning("node %r: bad frame from %r dropped: %s", self.node, self.peer, exc)
                continue
            except LinkBroken as exc:
                # Frames went missing (a reconnect): their requests cannot be trusted.
                self._set_up(False, str(exc))
                continue
            except ChannelClosed:
                return
            self.last_heard = time.monotonic()
            match frame:
                case Hello(node, epoch):
                    if epoch != self.peer_epoch and self.up:
                        self._set_up(False, "the peer restarted")
                    self.peer, self.peer_epoch = node, epoch
                    self._set_up(True, "")
                case Beat():
                    if self.peer:  # after a down spell: heard again, with the same epoch
                        self._set_up(True, "")
                case Ask():
                    self._serve(frame)
                case Item(correlation_id, payload):
                    entry = self._pending.get(correlation_id)
                    if entry is not None:
                        entry[0].send(entry[1].replies.decode(payload, self.peer))
                case Done(correlation_id, payload):
                    entry = self._pending.pop(correlation_id, None)
                    if entry is not None:
                        entry[0].reply(entry[1].replies.decode(payload, self.peer))
                case Fail(correlation_id, kind, message):
                    entry = self._pending.pop(correlation_id, None)
                    if entry is not None:
                        entry[0].fail(failure(self.peer, kind, message))
                case Refused(correlation_id, payload):
                    entry = self._pending.pop(correlation_id, None)
                    if entry is not None:
                        entry[0].fail(refusal(entry[1], self.peer, payload))

    # asking the peer ---------------------------------------------------------------------
    async def ask(self, name: str, protocol: PayloadCodecs, envelope: Envelope) -> None:
        if not self.up:
            raise NodeDown(name, self.peer or "?", "not connected")
        payload = msgspec.Raw(protocol.messages.encode(envelope.message))
        correlation_id = next(self._ids)
        if envelope.kind != "cast":
            self._pending[correlation_id] = (envelope, protocol)
        try:
            await self.channel.send(Ask(correlation_id, name, payload, envelope.kind))
        except (SendTimeout, ChannelClosed) as exc:
            self._pending.pop(correlation_id, None)
            raise NodeDown(name, self.peer, str(exc)) from None

    # serving the peer --------------------------------------------------------------------
    def _serve(self, ask: Ask) -> None:
        try:
            mailbox = self.registry.lookup(ask.target)
        except ActorUnavailable as exc:
            self.nursery.start_soon(self._send_fail, ask.correlation_id, exc)
            return
        protocol: PayloadCodecs | None = mailbox.protocol
        if protocol is None or isinstance(mailbox, RemoteMailbox):
            why = ActorUnavailable(ask.target, "not served to other nodes")
            self.nursery.start_soon(self._send_fail, ask.correlation_id, why)
            return
        try:
            message = protocol.messages.decode(ask.payload, self.peer)
        except MessageDecodeError as exc:
            self.nursery.start_soon(self._send_fail, ask.correlation_id, exc)
            return
        if ask.kind == "cast":
            mailbox.put_nowait(Envelope(message))
            return
        send, receive = trio.open_memory_channel[ReplyItem](100_000)
        envelope = Envelope(message, ask.kind, send, ask.correlation_id)
        self.nursery.start_soon(self._deliver_and_relay, mailbox, envelope, receive, protocol)

    async def _deliver_and_relay(
        self,
        mailbox: Any,
        envelope: Envelope,
        replies: trio.MemoryReceiveChannel[ReplyItem],
        protocol: PayloadCodecs,
    ) -> None:
        cid = envelope.correlation_id
        try:
            await mailbox.put(envelope)
        except ActorUnavailable as exc:
            await self._send_fail(cid, exc)
            return
        async with replies:
            try:
                async for kind, value in replies:
                    if kind == "error":
                        await self._send_fail(cid, value, protocol)
                        return
                    raw = msgspec.Raw(protocol.replies.encode(value))
                    await self.channel.send(Item(cid, raw) if kind == "item" else Done(cid, raw))
                    if kind == "done":
                        return
            except (SendTimeout, ChannelClosed):
                return  # the peer is gone; its side fails the request by itself
        # The actor went away without a terminal answer: say so, never leave a caller.
        await self._send_fail(cid, ActorUnavailable(mailbox.owner, "the request was dropped"))

    async def _send_fail(
        self, cid: int, error: BaseException, protocol: PayloadCodecs | None = None
    ) -> None:
        with trio.move_on_after(self.down_after_s):
            try:
                await self.channel.send(fail_frame(cid, error, protocol))
            except (SendTimeout, ChannelClosed):
                pass


def fail_frame(cid: int, error: BaseException, protocol: PayloadCodecs | None) -> Fail | Refused:
    """The frame for `error`: a refusal carries its Struct, runtime errors their type."""
    if isinstance(error, Rejected) and protocol is not None and protocol.errors is not None:
        return Refused(cid, msgspec.Raw(protocol.errors.encode(error.error)))
    if isinstance(error, RemoteError):
        return Fail(cid, error.kind, error.remote_message)
    if isinstance(error, ActorCrashed):
        return Fail(cid, "ActorCrashed", error.cause)
    return Fail(cid, type(error).__name__, str(error))


def failure(actor: str, kind: str, message: str) -> BaseException:
    """The exception a Fail frame stands for, of the type a local caller would get."""
    if kind == "ActorCrashed":
        return ActorCrashed(actor, message)
    if kind in ("ActorUnavailable", "NodeDown"):
        return ActorUnavailable(actor, message)
    return RemoteError(actor, kind, message)


def refusal(protocol: PayloadCodecs, actor: str, payload: msgspec.Raw) -> BaseException:
    """A Refused frame's Rejected, with the actor's own error Struct."""
    assert protocol.errors is not None, "a refusal from an actor without an error_type"
    try:
        return Rejected(actor, protocol.errors.decode(payload))
    except MessageDecodeError as exc:
        return RemoteError(actor, "BadRefusal", str(exc))
