"""Serve snapshots of an actor tree over an nng Rep0 socket (for inferflux-top and tests).

Request: any bytes (b"snapshot"). Reply: the root's ActorInfo as JSON. Several clients can
ask at once; each request costs one tree walk, no locks, nothing on the actors' hot paths.
"""

from __future__ import annotations

import contextlib
import os
import socket as socket_module
from typing import Callable

import msgspec
import pynng
import trio

from transports import Address, parse_address

from ._info import ActorInfo

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ActorInfo)


class IntrospectionServer:
    def __init__(self, address: Address | str, snapshot: Callable[[], ActorInfo]) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.snapshot = snapshot

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
                        socket.recv(block=False)
                    except pynng.TryAgain:
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    socket.send(_encoder.encode(self.snapshot()), block=False)
                    await trio.lowlevel.checkpoint()
            finally:
                trio.lowlevel.notify_closing(fd)
                if self.address.scheme == "ipc":
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.address.path)


def fetch_snapshot(address: Address | str, timeout_s: float = 2.0) -> ActorInfo:
    """Blocking client: ask a running server for its tree."""
    text = str(address)
    with pynng.Req0(recv_timeout=int(timeout_s * 1000), send_timeout=int(timeout_s * 1000)) as sock:
        sock.dial(text, block=True)
        sock.send(b"snapshot")
        return _decoder.decode(sock.recv())
