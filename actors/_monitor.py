"""Monitors of actors on another node (Erlang's `monitor/2`, over a node link).

A watcher asks its link to `monitor(name)`; the link sends the peer a Watch frame, and the
peer answers with the actor's state now and again whenever it changes, taken from its
Registry (an actor registers when it starts and leaves when it stops or crashes, with its
last error). The watcher's side also marks every monitor down the moment the link goes
down ("node down" is the reason, as Erlang's `noconnection`), and watches again on the
next Hello, since a restarted peer knows nothing of the old watches. That Watch can reach
the peer before our Hello does, while the link is still down on its side: so the watched
side also reports every actor it is asked to watch whenever its link comes up
(PeerRequests.peer_up).

Why frames from the registry rather than polling: a crash is reported in one frame, at
once, and nothing is sent while nothing changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec
import trio


class Watch(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Tell me about actor `name` (now, and whenever it comes up or goes down)."""

    name: str


class ActorState(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Actor `name` on the sending node is up, or down because of `why`."""

    name: str
    up: bool
    why: str = ""


class ActorMonitor:
    """What a watcher knows of one actor on a peer node."""

    def __init__(self, name: str, node: str) -> None:
        self.name, self.node = name, node
        self.up = False
        self.why = "not heard of yet"
        self.changes = 0  # how many times it went up or down, for tests and top
        self._callbacks: list[Callable[[ActorMonitor], None]] = []
        self._changed = trio.Event()

    def __repr__(self) -> str:
        state = "up" if self.up else f"down ({self.why})"
        return f"ActorMonitor({self.name!r} on {self.node!r}: {state})"

    def on_change(self, callback: Callable[[ActorMonitor], None]) -> None:
        """`callback(monitor)` whenever the actor goes up or down; must not block."""
        self._callbacks.append(callback)

    def set(self, up: bool, why: str) -> None:
        if up == self.up and (up or why == self.why):
            return
        self.up, self.why = up, "" if up else why
        self.changes += 1
        self._changed.set()
        self._changed = trio.Event()
        for callback in list(self._callbacks):
            callback(self)

    async def wait_up(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while not self.up:
                await self._changed.wait()

    async def wait_down(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while self.up:
                await self._changed.wait()
