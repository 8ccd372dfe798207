"""This server among its cluster peers, for disaggregated prefill/decode (issue 14).

A `ClusterNode` is a child of the served model's subtree: an actors.Node on that model's
registry, so the scheduler reaches peers by name like local actors.
- role prefill: the node opens its door at cluster.listen; decode nodes join there and
  send their long prompts to this node's `scheduler`, and pull the KV states from its
  `kvcache`.
- role decode: the node joins the prefill nodes of cluster.prefill and imports each one's
  scheduler as `prefill-...`: the names its own scheduler sends prefill jobs to (it
  watches the registry for that prefix), and its kvcache as `kvcache@prefill-...`. A
  door at an IP address is one peer, joined again and again with back-off while it does
  not answer (once joined, the link keeps itself joined). A door at a host name is every
  address the name resolves to (a Kubernetes headless Service: one per pod), resolved
  again every RESOLVE_EVERY_S: a new address is joined, one gone is left (its scheduler
  leaves the registry with the link); their certificates must carry the name. A peer not
  joined yet is simply not there: its prompts are prefilled here.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from actors import ActorInfo, JoinFailed, Node, Registry
from transports import TLS, parse_address

from ..config import Config
from ..kvcache.actor import KVCache
from ..kvcache.messages import holder_name
from ..scheduler.actor import Scheduler

log = logging.getLogger("inferflux.cluster")
JOIN_BACKOFF_S = (0.5, 8.0)
RESOLVE_EVERY_S = 10.0
PEER_PREFIX = "prefill-"

Resolver = Callable[[str, int], Awaitable[set[str]]]


async def resolve(host: str, port: int) -> set[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    found = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return {str(sockaddr[0]) for *_, sockaddr in found}


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ClusterNode:
    def __init__(
        self,
        config: Config,
        registry: Registry,
        resolver: Resolver = resolve,
        resolve_every_s: float = RESOLVE_EVERY_S,
    ) -> None:
        cluster = config.cluster
        tls = TLS(cluster.ca_file, cluster.cert_file, cluster.key_file) if cluster.ca_file else None
        name = f"{config.role}@{socket.gethostname()}:{config.server.port}"
        self.config = config
        self.resolver, self.resolve_every_s = resolver, resolve_every_s
        self.node = Node(
            name,
            registry,
            tls=tls,
            insecure=cluster.insecure,
            heartbeat_s=cluster.heartbeat_s,
            down_after_s=cluster.down_after_s,
        )
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.node.run)
            if self.config.role == "prefill":
                door = await self.node.serve(self.config.cluster.listen)
                log.info("prefill node: decode nodes join at %s", door)
            if self.config.role == "decode":
                for index, door in enumerate(self.config.cluster.prefill):
                    if is_address(parse_address(door).host) or door.startswith("ipc://"):
                        nursery.start_soon(self._join, f"{PEER_PREFIX}{index}", door, "")
                    else:
                        nursery.start_soon(self._follow_name, index, door)
            task_status.started(self)

    async def _join(self, name: str, door: str, server_name: str) -> None:
        backoff = JOIN_BACKOFF_S[0]
        while True:
            try:
                link = await self.node.join(door, server_name)
            except JoinFailed:  # logged by the node; the peer may start later
                await trio.sleep(backoff)
                backoff = min(backoff * 2, JOIN_BACKOFF_S[1])
                continue
            # The peer's kvcache first: the scheduler's name is what makes it a peer.
            link.import_actor("kvcache", KVCache, as_name=holder_name(name))
            link.import_actor("scheduler", Scheduler, as_name=name)
            log.info("decode node: prefill node %s joined as %s", door, name)
            return

    async def _follow_name(self, index: int, door: str) -> None:
        """The prefill nodes behind a host name: one peer per address it resolves to."""
        named = parse_address(door)
        joined: dict[str, trio.CancelScope] = {}  # address -> its joining task
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    found = await self.resolver(named.host, named.port)
                except OSError as exc:  # keep what we have: a resolver hiccup is no exit
                    log.warning("decode node: cannot resolve %s: %s", named.host, exc)
                    found = set(joined)
                for host in sorted(found - set(joined)):
                    door_at = str(msgspec.structs.replace(named, host=host))
                    joined[host] = scope = trio.CancelScope()
                    nursery.start_soon(self._join_within, scope, index, host, door_at, named.host)
                for host in sorted(set(joined) - found):
                    joined.pop(host).cancel()
                    door_at = str(msgspec.structs.replace(named, host=host))
                    self.node.leave(door_at)
                    log.info("decode node: %s no longer resolves to %s: left", named.host, host)
                await trio.sleep(self.resolve_every_s)

    async def _join_within(
        self, scope: trio.CancelScope, index: int, host: str, door: str, server_name: str
    ) -> None:
        with scope:
            await self._join(f"{PEER_PREFIX}{index}-{host}", door, server_name)

    def request_stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def info(self) -> ActorInfo:
        return self.node.info()
