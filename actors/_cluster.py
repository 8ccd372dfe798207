"""A node: this process among its peers.

A link is a pair socket between two nodes (actors/_node.py). So that one node can take
many peers, it listens on a door (`serve`): a peer knocks (`join`), the node opens a link
listener just for that peer on a fresh port (or ipc path) and answers its address, and the
peer dials it. Heartbeats, monitors and failures are the link's, and so is reconnecting
to the same link address; a peer that restarted has new link addresses, so the node that
joined it knocks on its door again (`_keep_joined`) and the link goes on over the new one.

Security: tls+tcp:// doors and links use mutual TLS with the cluster CA (transports.TLS):
a peer without a certificate the CA signed (or one that does not speak TLS at all) is
refused by the handshake inside nng and its knock never arrives; the node reads nng's
counters of each door and link (`auth`) every second and logs each refusal it finds there.
Plain tcp:// is for loopback only, unless `insecure` is set, which logs a warning.

A Node can be a supervisor's child (`run`, `request_stop`, `info`): its links, with their
state and round trip, and the remote actors imported through them appear in the tree.
"""

from __future__ import annotations

import ipaddress
import logging
import socket as socket_module
from typing import Any

import msgspec
import pynng
import trio

from transports import (
    DEFAULT_RECV_MAX_SIZE,
    TLS,
    Address,
    Channel,
    endpoint_counters,
    parse_address,
    unique_address,
)

from ._errors import ActorError
from ._info import ActorInfo, State
from ._node import DOWN_AFTER_S, HEARTBEAT_S, MAX_IN_FLIGHT, NodeLink
from ._node_wire import node_codec
from ._registry import Registry

log = logging.getLogger("actors.node")
KNOCK_TIMEOUT_S = 5.0
UNSPECIFIED_HOSTS = ("0.0.0.0", "::")
KNOCK_MAX_BYTES = 4096  # "join NAME": a door reads nothing bigger
REFUSALS_POLL_S = 1.0


class JoinFailed(ActorError):
    """A node's door did not let us in: unreachable, or the TLS handshake failed."""

    def __init__(self, address: str, why: str) -> None:
        self.address = address
        super().__init__(
            f"could not join the node at {address}: {why} (is it running there, and do "
            "both sides have certificates from the same cluster CA?)"
        )


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Node:
    def __init__(
        self,
        name: str,
        registry: Registry,
        *,
        tls: TLS | None = None,
        insecure: bool = False,
        heartbeat_s: float = HEARTBEAT_S,
        down_after_s: float = DOWN_AFTER_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        recv_max_size: int = DEFAULT_RECV_MAX_SIZE,
        knock_timeout_s: float = KNOCK_TIMEOUT_S,
        rejoin_after_s: float | None = None,
    ) -> None:
        """`recv_max_size`: the largest message a link takes (nng drops a bigger one and
        the connection it came on); `max_in_flight`: requests waiting on one peer, and
        from it; `rejoin_after_s` (default `down_after_s`): how long a link we joined may
        stay down, with no connection, before we knock on the peer's door again."""
        self.name, self.registry, self.tls, self.insecure = name, registry, tls, insecure
        self.heartbeat_s, self.down_after_s = heartbeat_s, down_after_s
        self.max_in_flight, self.recv_max_size = max_in_flight, recv_max_size
        self.knock_timeout_s = knock_timeout_s
        self.rejoin_after_s = down_after_s if rejoin_after_s is None else rejoin_after_s
        self.links: dict[str, NodeLink] = {}  # by door address (joined) or peer name (served)
        self.doors: list[tuple[Address, pynng.Listener]] = []
        self.state: State = "starting"
        self.refused_peers = 0  # peers that failed to authenticate, at doors and links
        self._link_scopes: dict[str, trio.CancelScope] = {}
        self._seen: dict[int, dict[str, int]] = {}
        self._server_names: dict[str, str] = {}  # joined address -> certificate name
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the doors and the links until cancelled (or `request_stop`)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.state = "running"
                nursery.start_soon(self._watch_refusals)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self.state = "stopped"

    def request_stop(self) -> None:
        """Close every door and link (a supervisor stopping this child)."""
        if self._nursery is not None:
            self.state = "stopping"
            self._nursery.cancel_scope.cancel()

    def info(self) -> ActorInfo:
        """The node (kind "node"), its links as children (kind "node-link": peer, address,
        link up/down, rtt_ms), and under each the remote actors imported through it."""
        return ActorInfo(
            name=f"node {self.name}",
            kind="node",
            state=self.state,
            children=[link.info() for link in self.links.values()],
            details={
                "doors": " ".join(str(address) for address, _ in self.doors),
                "refused_peers": self.refused_peers,
            },
        )

    @property
    def nursery(self) -> trio.Nursery:
        assert self._nursery is not None, "Node.run is not running"
        return self._nursery

    def _checked(self, address: str) -> Address:
        addr = parse_address(address)
        if addr.scheme == "tcp" and not is_loopback_host(addr.host):
            if not self.insecure:
                raise ValueError(
                    f"{address}: plain tcp off loopback would carry prompts in the clear; "
                    "use tls+tcp:// with the cluster CA (or set insecure)"
                )
            log.warning("node %r: INSECURE plain tcp link at %s", self.name, address)
        return addr

    def _tls_for(self, addr: Address, server_name: str = "") -> TLS | None:
        if addr.scheme != "tls+tcp" or self.tls is None:
            return None
        if not server_name:
            return self.tls
        return msgspec.structs.replace(self.tls, server_name=server_name)

    # the door ----------------------------------------------------------------------------
    async def serve(self, address: str) -> Address:
        """Open the door at `address`; the bound address (port 0 resolved)."""
        addr = self._checked(address)
        door = pynng.Rep0(recv_max_size=KNOCK_MAX_BYTES)
        try:
            tls = self._tls_for(addr)
            if tls is not None:
                door.tls_config = tls.config(True, addr.host)
            listener = door.listen(str(addr))
        except BaseException:
            door.close()
            raise
        if addr.scheme in ("tcp", "tls+tcp") and addr.port == 0:
            port = socket_module.ntohs(listener.local_address.port)
            addr = Address(addr.scheme, host=addr.host, port=port)
        self.doors.append((addr, listener))
        self.nursery.start_soon(self._door, door, addr)
        log.info("node %r: door open at %s", self.name, addr)
        return addr

    async def _door(self, door: pynng.Socket, addr: Address) -> None:
        fd = door.recv_fd
        try:
            while True:
                try:
                    knock = door.recv(block=False)
                except pynng.TryAgain:
                    await trio.lowlevel.wait_readable(fd)
                    continue
                peer = knock.decode("utf-8", "replace").removeprefix("join ")[:200]
                answer = await self._open_link(addr, peer)
                try:
                    door.send(str(answer).encode(), block=False)
                except pynng.NNGException as exc:
                    log.warning("node %r: answer to %r lost: %s", self.name, peer, exc)
        finally:
            self.doors = [(a, listener) for a, listener in self.doors if a != addr]
            trio.lowlevel.notify_closing(fd)
            door.close()

    async def _open_link(self, door: Address, peer: str) -> Address:
        if door.scheme == "ipc":
            link_address: Address = unique_address("ipc", "node-link", None)
        elif door.scheme == "inproc":
            link_address = unique_address("inproc", "node-link")
        else:
            link_address = Address(door.scheme, host=door.host, port=0)
        channel = Channel.listen(
            link_address,
            node_codec,
            tls=self._tls_for(door),
            peer_label=f"node {peer!r}",
            recv_max_size=self.recv_max_size,
        )
        old = self._link_scopes.pop(peer, None)
        if old is not None:  # the same node again (it restarted): its old link is dead
            old.cancel()
        link = self._link(channel)
        self.links[peer] = link
        await self.nursery.start(self._run_link, peer, link, None)
        log.info("node %r: %r joined through %s", self.name, peer, channel.address)
        return channel.address

    # joining a peer ------------------------------------------------------------------------
    async def join(self, address: str, server_name: str = "") -> NodeLink:
        """Knock on a peer's door and run the link it gives; returns before the link is up
        (`await link.wait_up()`). `server_name`: the name the peer's certificate must
        carry, when `address` is one of the addresses a name resolved to."""
        self._server_names[address] = server_name
        channel = await self._knock(address)
        link = self._link(channel)
        self.links[address] = link
        await self.nursery.start(self._run_link, address, link, address)
        return link

    def leave(self, address: str) -> None:
        """Close the link joined at `address` (its imported actors leave the registry)."""
        scope = self._link_scopes.get(address)
        if scope is not None:
            scope.cancel()
        self.links.pop(address, None)

    async def _knock(self, address: str) -> Channel[Any]:
        """Ask the door at `address` for a link; a channel dialing it (JoinFailed if the
        door does not answer)."""
        addr = self._checked(address)
        tls = self._tls_for(addr, self._server_names.get(address, ""))

        def knock() -> str:
            timeout = int(self.knock_timeout_s * 1000)
            with pynng.Req0(
                recv_timeout=timeout, send_timeout=timeout, recv_max_size=KNOCK_MAX_BYTES
            ) as sock:
                if tls is not None:
                    sock.tls_config = tls.config(False, addr.host)
                sock.dial(str(addr), block=True)
                sock.send(f"join {self.name}".encode())
                return sock.recv().decode()

        try:
            answered = await trio.to_thread.run_sync(knock, abandon_on_cancel=True)
        except pynng.NNGException as exc:
            # pynng's CryptoError/AuthenticationError: the handshake failed (either side's
            # certificate); Timeout: no answer (a door that refused us says nothing).
            failed = JoinFailed(address, f"{type(exc).__name__}: {exc}")
            log.warning("node %r: %s", self.name, failed)
            raise failed from None
        link_address = parse_address(answered)
        if link_address.host in UNSPECIFIED_HOSTS:
            # A door listening on every interface answers with the wildcard address: the
            # link is at the host we knocked at (and its certificate names that host).
            link_address = msgspec.structs.replace(link_address, host=addr.host)
        return Channel.dial(
            link_address,
            node_codec,
            tls=tls,
            peer_label=f"node at {address}",
            recv_max_size=self.recv_max_size,
        )

    async def _keep_joined(self, address: str, link: NodeLink) -> None:
        """Reconnection, for as long as the link runs. A hang or a partition heals on the
        same connection (nng redials its link address with back-off, 20 ms to 1 s). A
        peer that restarted has a new process and new link addresses, so a link that was
        up, has been down for `rejoin_after_s` and has no connection knocks on the door
        again (back-off 0.5 s to 8 s while the door does not answer) and goes on over the
        new link. A hung peer still holds its connection: knocking would not help, and
        its door would act on the knocks, stale by then, when it wakes."""
        await link.wait_up()  # a slow first connection is join's caller's to judge
        backoff = 0.5
        while True:
            await link.wait_down()
            with trio.move_on_after(self.rejoin_after_s):
                await link.wait_up()
            if link.up or link.channel.peers > 0:
                backoff = 0.5
                continue
            try:
                channel = await self._knock(address)
            except JoinFailed:
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 8.0)
                continue
            log.info("node %r: joined %s again, over %s", self.name, address, channel.address)
            link.replace_channel(channel)  # no checkpoint since the knock: nothing leaks
            self._seen[id(channel)] = {}  # a new channel: count its refusals from zero

    def _link(self, channel: Channel[Any]) -> NodeLink:
        return NodeLink(
            self.name,
            self.registry,
            channel,
            heartbeat_s=self.heartbeat_s,
            down_after_s=self.down_after_s,
            max_in_flight=self.max_in_flight,
        )

    async def _run_link(
        self,
        key: str,
        link: NodeLink,
        rejoin_at: str | None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run `link` until it closes or is cancelled; a link we joined (`rejoin_at`: the
        door) is kept joined meanwhile, and that ends with it."""
        with trio.CancelScope() as scope:
            self._link_scopes[key] = scope
            self._seen[id(link.channel)] = {}  # a new channel: count its refusals from zero
            try:
                async with trio.open_nursery() as nursery:
                    if rejoin_at is not None:
                        nursery.start_soon(self._keep_joined, rejoin_at, link)
                    await link.run(task_status=task_status)
                    nursery.cancel_scope.cancel()  # the link closed: nothing to rejoin
            finally:
                link.channel.close()  # the latest one (a rejoin closed those before it)
                if self._link_scopes.get(key) is scope:
                    del self._link_scopes[key]

    # refusals nng saw (and we would not otherwise) --------------------------------------
    async def _watch_refusals(self) -> None:
        while True:
            await trio.sleep(REFUSALS_POLL_S)
            current: set[int] = set()
            for address, listener in self.doors:
                current.add(id(listener))
                self._note(id(listener), str(address), endpoint_counters(listener))
            for link in self.links.values():
                if not link.closed:
                    channel = link.channel
                    current.add(id(channel))
                    self._note(id(channel), str(channel.address), channel.counters())
            self._seen = {key: seen for key, seen in self._seen.items() if key in current}

    def _note(self, key: int, where: str, counters: dict[str, int]) -> None:
        seen = self._seen.setdefault(key, {})
        refused = counters.get("auth", 0) - seen.get("auth", 0)
        if refused > 0:
            self.refused_peers += refused
            log.warning(
                "node %r: refused %d peer(s) at %s: the TLS handshake failed (no certificate "
                "from the cluster CA, or not speaking TLS)",
                self.name,
                refused,
                where,
            )
        if counters:
            self._seen[key] = counters
