"""Serve snapshots of an actor tree over an nng Rep0 socket (for inferflux-top and tests).

Request: b"snapshot" (or anything that is not a JSON command). Reply: the root's ActorInfo
as JSON. Several clients can ask at once; each request costs one tree walk, no locks,
nothing on the actors' hot paths.

Chaos commands (only when the server was given a `control` handler, i.e. started with
chaos enabled), JSON objects:
  {"op": "crash", "actor": NAME}   an exception inside that actor (for a process actor in
                                   its child process; add "where": "proxy" for the proxy)
  {"op": "faults", "actor": NAME, "faults": {...}}   a transports.Faults plan on a process
                                   actor's link ({} heals it)
Reply: {"ok": true} or {"error": "..."}.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket as socket_module
from typing import Any, Callable

import msgspec
import pynng
import trio

from transports import Address, Faults, parse_address

from ._info import ActorInfo
from ._process import ProcessActor
from ._supervisor import Supervisor

log = logging.getLogger("actors.introspection")
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ActorInfo)


class IntrospectionServer:
    def __init__(
        self,
        address: Address | str,
        snapshot: Callable[[], ActorInfo],
        control: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.snapshot = snapshot
        self.control = control
        self.dropped = 0

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with pynng.Rep0() as socket:
            listener = socket.listen(str(self.address))
            if self.address.scheme == "tcp" and self.address.port == 0:
                self.address = Address(
                    "tcp",
                    host=self.address.host,
                    port=socket_module.ntohs(listener.local_address.port),
                )
            fd = socket.recv_fd
            task_status.started()
            try:
                while True:
                    try:
                        request = socket.recv(block=False)
                    except pynng.TryAgain:
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    try:
                        socket.send(self._answer(request), block=False)
                    except pynng.NNGException as exc:
                        # A client that asks without reading fills its pipe: its answers
                        # are dropped, the server goes on (nothing here may end it).
                        self.dropped += 1
                        log.warning("introspection answer dropped: %s", exc)
                    await trio.lowlevel.checkpoint()
            finally:
                trio.lowlevel.notify_closing(fd)
                if self.address.scheme == "ipc":
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.address.path)

    def _answer(self, request: bytes) -> bytes:
        if not request.startswith(b"{"):
            return _encoder.encode(self.snapshot())
        if self.control is None:
            return _encoder.encode({"error": "chaos commands are off (start with --chaos)"})
        try:
            command = msgspec.json.decode(request, type=dict[str, Any])
            return _encoder.encode(self.control(command))
        except Exception as exc:  # a bad command must never take the server down
            return _encoder.encode({"error": f"{type(exc).__name__}: {exc}"})


def chaos_control(root: Supervisor) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The command handler for an IntrospectionServer that accepts chaos commands."""

    def control(command: dict[str, Any]) -> dict[str, Any]:
        name = str(command.get("actor", ""))
        actor = root.find(name)
        if actor is None:
            return {"error": f"no running actor {name!r}"}
        match command.get("op"):
            case "crash":
                actor.inject_crash(str(command.get("where", "child")))  # type: ignore[attr-defined]
            case "faults":
                if not isinstance(actor, ProcessActor):
                    return {"error": f"{name!r} has no link to fault (not a process actor)"}
                faults = msgspec.convert(command.get("faults") or {}, Faults)
                actor.set_faults(faults if faults.active else None)
            case other:
                return {"error": f"unknown op {other!r} (crash, faults)"}
        return {"ok": True}

    return control


def send_command(address: Address | str, command: dict[str, Any], timeout_s: float = 2.0) -> Any:
    """Blocking client for chaos commands."""
    with pynng.Req0(recv_timeout=int(timeout_s * 1000), send_timeout=int(timeout_s * 1000)) as sock:
        sock.dial(str(address), block=True)
        sock.send(_encoder.encode(command))
        return msgspec.json.decode(sock.recv())


def fetch_snapshot(address: Address | str, timeout_s: float = 2.0) -> ActorInfo:
    """Blocking client: ask a running server for its tree."""
    text = str(address)
    with pynng.Req0(recv_timeout=int(timeout_s * 1000), send_timeout=int(timeout_s * 1000)) as sock:
        sock.dial(text, block=True)
        sock.send(b"snapshot")
        return _decoder.decode(sock.recv())
