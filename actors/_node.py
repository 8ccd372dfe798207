"""Nodes: actors in other processes or on other hosts, reached by name like local ones.

A node is a registry and the links to its peers. A link is one transports.Channel (ipc,
tcp, or tls+tcp) carrying requests both ways: a node asks the peer's actors through a
`RemoteMailbox` registered in its own registry (so `ActorRef(name)` does not change), and
serves the peer's requests from its registry. Every message, reply and refusal travels in
the target actor's protocol (its message_type, reply_type and error_type).

Failure semantics (docs/actors.md):
- Links carry heartbeats. A peer not heard from for `down_after_s` (it died, hangs, or the
  network is partitioned) is down: every request in flight to it fails at once with
  NodeDown, new ones too, and watchers are told (`watch`). Never a hang. A connection the
  peer closed (it exited) is down at once, without waiting for the silence.
- nng redials with back-off by itself; the first frame from the peer brings the link up
  again (a new Hello, a new epoch: requests of the old epoch are gone for good). A peer
  that restarted listens on a new link address: the node that joined it knocks again and
  the link goes on over the new channel (`replace_channel`, actors/_cluster.py).
- Every receive is bounded (the channel's maximum message size), every send has a deadline,
  and so is what waits: at most `max_in_flight` requests to the peer and as many from it.
- Monitors (actors/_monitor.py): `monitor(name)` follows one actor on the peer; it goes
  down when that actor stops or crashes (with its error), or when the link does.
- Heartbeats measure the round trip: a Beat carries its sender's clock and echoes the last
  one heard with how long it was held, so `round_trip_s` needs no clocks in common.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from transports import Channel, ChannelClosed, LinkBroken, MessageDecodeError, SendTimeout

from ._envelope import Envelope
from ._errors import ActorUnavailable, MailboxFull
from ._info import ActorInfo, State
from ._link import Done, Fail, Item, PayloadCodecs, Refused
from ._monitor import ActorMonitor, ActorState, Watch
from ._node_serve import PeerRequests
from ._node_wire import Ask, Beat, Hello, failure, refusal, send_frame
from ._registry import Registry

log = logging.getLogger("actors.node")

HEARTBEAT_S = 0.5
DOWN_AFTER_S = 3.0
MAX_IN_FLIGHT = 10_000  # requests waiting on the peer (and from it) per link


class NodeDown(ActorUnavailable):
    """The node an actor lives on cannot be reached (dead, hung, or partitioned)."""

    def __init__(self, name: str, node: str, why: str) -> None:
        self.node = node
        super().__init__(name, f"node {node!r} is down: {why}")


class RemoteMailbox:
    """What a local ActorRef finds for an actor on a peer node: putting an envelope sends
    it over the link; replies come back into the envelope."""

    def __init__(self, name: str, link: NodeLink, protocol: PayloadCodecs) -> None:
        self.owner, self.link, self.protocol = name, link, protocol
        self.capacity = 0  # what waits is in nng's buffers, bounded by the send deadline
        self.messages_in = 0
        self.depth = 0

    closed = False  # always "open": while the link is down, putting raises NodeDown
    remote = True  # never served on to a third node

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
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.node, self.registry, self.channel = node, registry, channel
        self.heartbeat_s, self.down_after_s = heartbeat_s, down_after_s
        self.max_in_flight = max_in_flight
        self.peer = ""  # the peer's node name, from its Hello
        self.peer_epoch = -1
        self.up = False
        self.closed = False
        self.last_heard = -math.inf
        self.round_trip_s = 0.0  # the latest heartbeat's round trip (0: not measured yet)
        self.downs = 0  # times the peer went down, for introspection
        self.why_down = ""
        self.asks_sent = 0
        self._peer_stamp = self._peer_stamp_at = 0.0
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[Envelope, PayloadCodecs]] = {}
        self._requests = PeerRequests(self)  # what the peer asks of us
        self._watchers: list[Callable[[NodeLink, bool], None]] = []
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._imports: dict[str, RemoteMailbox] = {}
        self._monitors: dict[str, ActorMonitor] = {}  # ours, of the peer's actors

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "the link is not running"
        return self._nursery

    # imports and monitors --------------------------------------------------------------
    def import_actor(self, name: str, actor_class: Any, as_name: str | None = None) -> None:
        """Make the peer's actor `name` reachable here as `as_name` (default: `name`)."""
        protocol = PayloadCodecs(actor_class)
        mailbox = RemoteMailbox(name, self, protocol)
        self.registry.register(as_name or name, mailbox)  # type: ignore[arg-type]
        self._imports[as_name or name] = mailbox

    def monitor(self, name: str) -> ActorMonitor:
        """Follow the peer's actor `name`: the monitor is up while it runs there, and
        goes down, with the reason, when it stops or crashes or the link goes down."""
        monitor = self._monitors.get(name)
        if monitor is None:
            monitor = self._monitors[name] = ActorMonitor(name, self.peer)
            if self.up:
                self.nursery.start_soon(self._requests.send_quietly, Watch(name))
        return monitor

    def watch(self, callback: Callable[[NodeLink, bool], None]) -> None:
        """`callback(link, up)` whenever the peer comes up or goes down."""
        self._watchers.append(callback)

    async def wait_up(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while not self.up:
                await self._changed.wait()

    async def wait_down(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while self.up:
                await self._changed.wait()

    def info(self) -> ActorInfo:
        """This link for introspection (kind "node-link"), the peer's actors imported
        through it as its children (kind "remote")."""
        state: State = (
            "stopped"
            if self.closed
            else "running"
            if self.up
            else "restarting"
            if self.peer
            else "starting"
        )
        remote = []
        for alias, mailbox in self._imports.items():
            monitor = self._monitors.get(mailbox.owner)
            running = self.up and (monitor is None or monitor.up)
            remote.append(
                ActorInfo(
                    name=alias,
                    kind="remote",
                    state="running" if running else "stopped",
                    messages_in=mailbox.messages_in,
                    last_error="" if running or monitor is None else monitor.why,
                    details={"node": self.peer, "remote_name": mailbox.owner},
                )
            )
        return ActorInfo(
            name=self.peer or str(self.channel.address),
            kind="node-link",
            state=state,
            mailbox_depth=len(self._pending),
            messages_in=self._requests.served,
            messages_out=self.asks_sent,
            restarts=self.downs,
            last_error="" if self.up else self.why_down,
            children=remote,
            details={
                "peer": self.peer,
                "address": str(self.channel.address),
                "link": "up" if self.up else "down",
                "rtt_ms": round(self.round_trip_s * 1000, 2),
                "monitors": len(self._monitors),
            },
        )

    # running ---------------------------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        unwatch = self.registry.watch(self._requests.local_actor_changed)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._beat)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._watch_connection)
                task_status.started()
                try:
                    await self._receive_loop()
                finally:
                    self._set_up(False, "link closed")
                    nursery.cancel_scope.cancel()
        finally:
            unwatch()
            self.closed = True
            for alias, mailbox in self._imports.items():
                self.registry.unregister(alias, mailbox, "link closed")  # type: ignore[arg-type]

    async def _beat(self) -> None:
        epoch = id(self) ^ int(time.monotonic() * 1e6)
        hello_sent_to = None
        while True:
            try:
                if hello_sent_to != self.peer_epoch or not self.up:
                    await send_frame(self.channel, Hello(self.node, epoch), self.heartbeat_s)
                    hello_sent_to = self.peer_epoch
                await send_frame(self.channel, self._beat_frame(), self.heartbeat_s)
            except (SendTimeout, ChannelClosed):
                pass  # nobody to hear it: the watchdog decides about the peer
            await trio.sleep(self.heartbeat_s)

    def _beat_frame(self) -> Beat:
        now = time.monotonic()
        if not self._peer_stamp:
            return Beat(now)
        return Beat(now, self._peer_stamp, now - self._peer_stamp_at)

    def _heard_beat(self, beat: Beat) -> None:
        now = time.monotonic()
        if beat.echo:
            self.round_trip_s = max(0.0, now - beat.echo - beat.held_s)
        self._peer_stamp, self._peer_stamp_at = beat.stamp, now

    async def _watchdog(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s / 2)
            silent = time.monotonic() - self.last_heard
            if self.up and silent > self.down_after_s:
                self._set_up(False, f"not heard from for {silent:.1f}s")

    def replace_channel(self, channel: Channel[Any]) -> None:
        """Go on over `channel` (the node joined its peer again: the peer restarted and
        its old link address is gone). The link is down until the peer's Hello comes over
        the new channel: requests in flight on the old one fail with NodeDown (their
        answers could only come over the old channel), and the old channel is closed,
        which ends what waits on it (each task here then goes on with the new one)."""
        self._set_up(False, "joined again over a new link")
        old, self.channel = self.channel, channel
        old.close()

    async def _watch_connection(self) -> None:
        """A closed connection (the peer exited, or its host said so) is down at once,
        without waiting for the heartbeats to go quiet; nng redials by itself, and the
        next frame heard brings the link up again."""
        while True:
            channel = self.channel
            async for event in channel.peer_events:  # ends when the channel is closed
                if event.kind == "disconnected" and channel.peers <= 0:
                    if channel is self.channel:  # not an old, replaced one closing
                        self._set_up(False, "the connection closed")
            if channel is self.channel:
                return  # closed, not replaced

    def _set_up(self, up: bool, why: str) -> None:
        if up == self.up:
            return
        self.up = up
        if not up:
            log.warning("node %r: peer %r is down (%s)", self.node, self.peer, why)
            self.downs += 1
            self.why_down = why
            pending, self._pending = self._pending, {}
            for envelope, _ in pending.values():
                envelope.fail(NodeDown(self.peer or "?", self.peer or "?", why))
            self._peer_stamp = 0.0  # an echo from before the outage would overstate it
            for monitor in self._monitors.values():
                monitor.set(False, f"node {self.peer!r} is down: {why}")
        else:
            log.info("node %r: peer %r is up", self.node, self.peer)
            # Watch again: a peer that restarted knows nothing of our monitors.
            for name, monitor in self._monitors.items():
                monitor.node = self.peer
                self.nursery.start_soon(self._requests.send_quietly, Watch(name))
            self._requests.peer_up()  # and answer the peer's watches of our actors
        self._changed.set()
        self._changed = trio.Event()
        for watcher in self._watchers:
            watcher(self, up)

    async def _receive_loop(self) -> None:
        while True:
            channel = self.channel
            try:
                frame = await channel.receive()
            except MessageDecodeError as exc:
                log.warning("node %r: bad frame from %r dropped: %s", self.node, self.peer, exc)
                continue
            except LinkBroken as exc:
                # Frames went missing (a reconnect): their requests cannot be trusted.
                if channel is self.channel:
                    self._set_up(False, str(exc))
                continue
            except ChannelClosed:
                if channel is not self.channel:
                    continue  # replaced: read the new one
                return
            if channel is not self.channel:
                continue  # came over the old channel, replaced while this task waited
            self.last_heard = time.monotonic()
            match frame:
                case Hello(node, epoch):
                    if epoch != self.peer_epoch and self.up:
                        self._set_up(False, "the peer restarted")
                    self.peer, self.peer_epoch = node, epoch
                    self._set_up(True, "")
                case Beat():
                    self._heard_beat(frame)
                    if self.peer:  # after a down spell: heard again, with the same epoch
                        self._set_up(True, "")
                case Ask():
                    self._requests.serve(frame)
                case Watch(name):
                    self._requests.watch(name)
                case ActorState(name, up, why):
                    monitor = self._monitors.get(name)
                    if monitor is not None and self.up:
                        monitor.set(up, why)
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
        if len(self._pending) >= self.max_in_flight:
            raise MailboxFull(name, self.max_in_flight, 0.0)
        payload = msgspec.Raw(protocol.messages.encode(envelope.message))
        correlation_id = next(self._ids)
        self.asks_sent += 1
        if envelope.kind != "cast":
            self._pending[correlation_id] = (envelope, protocol)
        try:
            await send_frame(self.channel, Ask(correlation_id, name, payload, envelope.kind))
        except (SendTimeout, ChannelClosed) as exc:
            self._pending.pop(correlation_id, None)
            raise NodeDown(name, self.peer, str(exc)) from None
