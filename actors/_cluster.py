"""A node: this process among its peers.

A link is a pair socket between two nodes (actors/_node.py). So that one node can take
many peers, it listens on a door (`serve`): a peer knocks (`join`), the node opens a link
listener just for that peer on a fresh port (or ipc path) and answers its address, and the
peer dials it. Heartbeats, monitors and failures are the link's.

Security: tls+tcp:// doors and links use mutual TLS with the cluster CA (transports.TLS):
a peer without a certificate the CA signed is refused by the TLS handshake, and that
refusal is logged by nng's side as a failed connection; the knock never arrives. Plain
tcp:// is for loopback only, unless `insecure` is set, which logs a warning.
"""

from __future__ import annotations

import ipaddress
import logging
import socket as socket_module
from typing import Any

import pynng
import trio

from transports import TLS, Address, Channel, parse_address, unique_address

from ._node import DOWN_AFTER_S, HEARTBEAT_S, NodeLink, node_codec
from ._registry import Registry

log = logging.getLogger("actors.node")
KNOCK_TIMEOUT_S = 5.0


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
    ) -> None:
        self.name, self.registry, self.tls, self.insecure = name, registry, tls, insecure
        self.heartbeat_s, self.down_after_s = heartbeat_s, down_after_s
        self.links: dict[str, NodeLink] = {}  # by door address (joined) or peer name (served)
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the door and the links until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            await trio.sleep_forever()

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

    def _tls_for(self, addr: Address) -> TLS | None:
        return self.tls if addr.scheme == "tls+tcp" else None

    # the door ----------------------------------------------------------------------------
    async def serve(self, address: str) -> Address:
        """Open the door at `address`; the bound address (port 0 resolved)."""
        addr = self._checked(address)
        door = pynng.Rep0()
        tls = self._tls_for(addr)
        if tls is not None:
            door.tls_config = tls.config(True, addr.host)
        listener = door.listen(str(addr))
        if addr.scheme in ("tcp", "tls+tcp") and addr.port == 0:
            port = socket_module.ntohs(listener.local_address.port)
            addr = Address(addr.scheme, host=addr.host, port=port)
        self.nursery.start_soon(self._door, door, addr)
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
            link_address, node_codec, tls=self._tls_for(door), peer_label=f"node {peer!r}"
        )
        link = self._link(channel)
        self.links[peer] = link
        await self.nursery.start(self._run_link, link, channel)
        log.info("node %r: %r joined through %s", self.name, peer, channel.address)
        return channel.address

    # joining a peer ------------------------------------------------------------------------
    async def join(self, address: str) -> NodeLink:
        """Knock on a peer's door and run the link it gives; returns before the link is up
        (`await link.wait_up()`)."""
        addr = self._checked(address)
        tls = self._tls_for(addr)

        def knock() -> str:
            timeout = int(KNOCK_TIMEOUT_S * 1000)
            with pynng.Req0(recv_timeout=timeout, send_timeout=timeout) as sock:
                if tls is not None:
                    sock.tls_config = tls.config(False, addr.host)
                sock.dial(str(addr), block=True)
                sock.send(f"join {self.name}".encode())
                return sock.recv().decode()

        link_address = await trio.to_thread.run_sync(knock)
        channel = Channel.dial(link_address, node_codec, tls=tls, peer_label=f"node at {address}")
        link = self._link(channel)
        self.links[address] = link
        await self.nursery.start(self._run_link, link, channel)
        return link

    def _link(self, channel: Channel[Any]) -> NodeLink:
        return NodeLink(
            self.name,
            self.registry,
            channel,
            heartbeat_s=self.heartbeat_s,
            down_after_s=self.down_after_s,
        )

    async def _run_link(
        self, link: NodeLink, channel: Channel[Any], task_status: trio.TaskStatus[None]
    ) -> None:
        with channel:
            await link.run(task_status=task_status)
