"""This server among its cluster peers, for disaggregated prefill/decode (issue 14).

A `ClusterNode` is a child of the served model's subtree: an actors.Node on that model's
registry, so the scheduler reaches peers by name like local actors.
- role prefill: the node opens its door at cluster.listen; decode nodes join there and
  send their long prompts to this node's `scheduler`.
- role decode: the node joins each prefill node's door (again and again, with back-off,
  while it does not answer; once joined, the link keeps itself joined) and imports that
  node's scheduler as `prefill-0`, `prefill-1`..., the names its own scheduler sends
  prefill jobs to (`prefill_peer_names`). A peer not joined yet is simply unavailable:
  its prompts are prefilled here.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio

from actors import ActorInfo, JoinFailed, Node, Registry
from transports import TLS

from ..config import Config
from ..scheduler.actor import Scheduler

log = logging.getLogger("inferflux.cluster")
JOIN_BACKOFF_S = (0.5, 8.0)


def prefill_peer_names(config: Config) -> list[str]:
    """The names the decode scheduler knows its prefill nodes by."""
    if config.role != "decode":
        return []
    return [f"prefill-{i}" for i in range(len(config.cluster.prefill))]


class ClusterNode:
    def __init__(self, config: Config, registry: Registry) -> None:
        cluster = config.cluster
        tls = TLS(cluster.ca_file, cluster.cert_file, cluster.key_file) if cluster.ca_file else None
        name = f"{config.role}@{socket.gethostname()}:{config.server.port}"
        self.config = config
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
            for name, door in zip(
                prefill_peer_names(self.config), self.config.cluster.prefill, strict=True
            ):
                nursery.start_soon(self._join, name, door)
            task_status.started(self)

    async def _join(self, name: str, door: str) -> None:
        backoff = JOIN_BACKOFF_S[0]
        while True:
            try:
                link = await self.node.join(door)
            except JoinFailed:  # logged by the node; the peer may start later
                await trio.sleep(backoff)
                backoff = min(backoff * 2, JOIN_BACKOFF_S[1])
                continue
            link.import_actor("scheduler", Scheduler, as_name=name)
            log.info("decode node: prefill node %s joined as %s", door, name)
            return

    def request_stop(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def info(self) -> ActorInfo:
        return self.node.info()
