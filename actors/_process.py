"""Process actors: an actor in its own OS process, supervised like any other child.

The parent holds a proxy (`ProcessActor`) that owns a local mailbox, so ActorRef works the
same for local and process actors. The proxy listens on a fresh ipc:// (or tcp://) address,
spawns `python -m actors._child inferflux-<role> ...`, and relays envelopes as link frames.

Failure handling:
- The child exiting for any reason (exception, C crash, SIGKILL) ends the proxy's `run`
  with ProcessExited, so the supervisor restarts it per its strategy.
- Requests in flight when it dies are answered with ActorCrashed; requests sent while it is
  down get ActorUnavailable at once. The runtime never queues for a dead actor and never
  leaves a caller waiting: retrying is the caller's policy.
- Stop: a Stop frame asks for a graceful exit; after `term_timeout_s` SIGTERM, then SIGKILL.
- The child watches its stdin, a pipe from the parent: when the parent dies, for whatever
  reason, the pipe closes and the child exits at once. No orphans.

Imports: `imports` names actors of this registry the child may reach by name, over the
same link (actors/_imports.py); the child also reports its actor's details() there.

Environment: `env`, when given, is the child's entire environment, not additions to this
process's: a caller that keeps secrets from its children passes exactly what they need.
Without it the child inherits this process's environment.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import trio

from transports import Channel, ChannelClosed, Faults, MessageDecodeError, unique_address

from ._base import BaseActor
from ._envelope import Envelope
from ._errors import InjectedCrash, RemoteError
from ._imports import ChildAsks
from ._link import (
    Ask,
    Call,
    Cast,
    Details,
    Done,
    Fail,
    Hello,
    InjectCrash,
    Item,
    PayloadCodecs,
    Refused,
    Stop,
    frame_codec,
    import_target,
)
from ._node_wire import failure, refusal
from ._registry import Registry

log = logging.getLogger("actors.process")


class ProcessExited(Exception):
    def __init__(self, name: str, returncode: int | None) -> None:
        self.returncode = returncode
        how = (
            f"killed by signal {signal.Signals(-returncode).name}"
            if returncode is not None and returncode < 0
            else f"exit code {returncode}"
        )
        super().__init__(f"process actor {name!r} exited unexpectedly ({how})")


class ProcessActor(BaseActor):
    kind = "process"
    mailbox_capacity = 1024

    def __init__(
        self,
        name: str,
        target: str,
        options: dict[str, Any] | None = None,
        *,
        role: str = "worker",
        scheme: Literal["ipc", "tcp"] = "ipc",
        start_timeout_s: float = 120.0,
        term_timeout_s: float = 5.0,
        env: dict[str, str] | None = None,
        socket_dir: str | None = None,
        in_registry: Registry | None = None,
        imports: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, in_registry=in_registry)
        # Actors of this registry the child may reach by name: name -> its class
        # ("pkg.module:Class", for its protocol); see actors/_imports.py.
        self.imports = dict(imports or {})
        self.child_details: dict[str, float | int | str] = {}
        self.target = target
        self.options = options or {}
        self.role = role
        self.scheme = scheme
        self.start_timeout_s = start_timeout_s
        self.term_timeout_s = term_timeout_s
        self.env = env
        self.socket_dir = socket_dir  # a private directory (transports.SocketDir) for ipc
        self.bad_replies = 0  # replies from the child that did not decode: dropped
        self.codecs = PayloadCodecs(import_target(target))
        self.mailbox.protocol = self.codecs  # the child actor's protocol
        self.pid = 0
        self._pending: dict[int, Envelope] = {}
        self._stop_requested = False
        self._stop_event = trio.Event()
        self._channel: Channel[Any] | None = None
        self._pumps: trio.Nursery | None = None

    def request_stop(self) -> None:
        if self.state in ("starting", "running"):
            self.state = "stopping"
        self._stop_requested = True
        self._stop_event.set()
        self.mailbox.close()

    def details(self) -> dict[str, float | int | str]:
        """The child actor's own details (as it last reported them), and the link's."""
        return {
            **self.child_details,
            "in_flight": len(self._pending),
            "bad_replies": self.bad_replies,
        }

    def inject_crash(self, where: str = "child") -> None:
        """Chaos: an exception inside the child's actor ("child": the process exits with
        it) or inside this proxy ("proxy"); either way the supervisor restarts it."""
        if self._pumps is None or self._channel is None:
            raise RuntimeError(f"process actor {self.name!r} is not running")
        if where == "child":
            self._pumps.start_soon(self._channel.send, InjectCrash())
            return

        async def crash() -> None:
            raise InjectedCrash("injected by the chaos harness")

        self._pumps.start_soon(crash)

    def set_faults(self, faults: Faults | None) -> None:
        """Drop/duplicate/delay frames on the link to the child, both ways (chaos)."""
        if self._channel is None:
            raise RuntimeError(f"process actor {self.name!r} is not running")
        self._channel.faults = faults

    def command(self, address: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "actors._child",
            f"inferflux-{self.role}",
            "--name",
            self.name,
            "--connect",
            address,
            "--target",
            self.target,
            "--options",
            json.dumps(self.options),
            "--imports",
            json.dumps(self.imports),
        ]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        address = unique_address(self.scheme, f"actor-{self.role}", self.socket_dir)
        process: trio.Process | None = None
        try:
            # Restricted: an ipc link takes only the process spawned here (by its pid),
            # not whoever finds the socket first.
            with Channel.listen(
                address,
                frame_codec,
                peer_label=f"process actor {self.name!r}",
                restrict_peers=True,
            ) as channel:
                # A given env is the child's whole environment (the caller scrubs it).
                env = dict(os.environ) if self.env is None else dict(self.env)
                process = await trio.lowlevel.open_process(
                    self.command(str(channel.address)), stdin=subprocess.PIPE, env=env
                )
                self.pid = process.pid
                channel.accept_only(process.pid)
                await self._await_hello(channel, process)
                self.registry.register(self.name, self.mailbox)
                self.state = "running"
                task_status.started()
                self._channel = channel
                async with trio.open_nursery() as nursery:
                    self._pumps = nursery
                    asks = ChildAsks(self.name, self.registry, channel, nursery, set(self.imports))
                    nursery.start_soon(self._pump_out, channel)
                    nursery.start_soon(self._pump_in, channel, asks)
                    nursery.start_soon(self._escalate_stop, process)
                    code = await process.wait()
                    nursery.cancel_scope.cancel()
                # After a requested stop any exit is a stop, even one we forced with SIGKILL.
                if not self._stop_requested:
                    raise ProcessExited(self.name, code)
        except BaseException as exc:
            self._record_crash(exc)
            raise
        finally:
            self._channel = self._pumps = None
            self._go_down(self._pending.values(), f"process down ({self.last_error or 'stopped'})")
            self._pending.clear()
            if process is not None:
                with trio.CancelScope(shield=True):
                    await self._terminate(process)
            if address.scheme == "ipc":
                try:
                    os.unlink(address.path)
                except FileNotFoundError:
                    pass
            self._settle_state()

    async def _await_hello(self, channel: Channel[Any], process: trio.Process) -> None:
        with trio.move_on_after(self.start_timeout_s) as scope:
            async with trio.open_nursery() as nursery:

                async def died() -> None:
                    code = await process.wait()
                    raise ProcessExited(self.name, code)

                nursery.start_soon(died)
                frame = await channel.receive()
                if not isinstance(frame, Hello):
                    raise RuntimeError(f"process actor {self.name!r} sent {frame!r} before Hello")
                nursery.cancel_scope.cancel()
        if scope.cancelled_caught:
            raise TimeoutError(
                f"process actor {self.name!r} did not start within {self.start_timeout_s}s"
            )

    async def _pump_out(self, channel: Channel[Any]) -> None:
        encode = self.codecs.messages.encode
        while True:
            try:
                envelope = await self.mailbox.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                await channel.send(Stop())
                return
            payload = msgspec.Raw(encode(envelope.message))
            if envelope.kind == "cast":
                await channel.send(Cast(payload))
            else:
                self._pending[envelope.correlation_id] = envelope
                await channel.send(
                    Call(envelope.correlation_id, payload, envelope.kind == "stream")
                )

    async def _pump_in(self, channel: Channel[Any], asks: ChildAsks) -> None:
        decode = self.codecs.replies.decode
        while True:
            try:
                frame = await channel.receive()
            except MessageDecodeError:
                continue  # a bad frame is dropped; the link stays up
            except ChannelClosed:
                return
            match frame:
                case Item(correlation_id, payload):
                    envelope = self._pending.get(correlation_id)
                    if envelope is not None and (item := self._decoded(decode, payload)):
                        envelope.send(item[0])
                case Done(correlation_id, payload):
                    envelope = self._pending.pop(correlation_id, None)
                    if envelope is None:
                        continue
                    if reply := self._decoded(decode, payload):
                        envelope.reply(reply[0])
                        self.messages_out += 1
                    else:  # its caller must not wait for an answer that will not come
                        envelope.fail(RemoteError(self.name, "BadReply", "undecodable reply"))
                case Fail(correlation_id, kind, message):
                    envelope = self._pending.pop(correlation_id, None)
                    if envelope is not None:
                        envelope.fail(failure(self.name, kind, message))
                case Refused(correlation_id, payload):
                    envelope = self._pending.pop(correlation_id, None)
                    if envelope is not None:
                        envelope.fail(refusal(self.codecs, self.name, payload))
                case Ask():
                    asks.serve(frame)
                case Details(values):
                    self.child_details = values

    def _decoded(self, decode: Callable[[Any], Any], payload: Any) -> tuple[Any] | None:
        """(the reply,) or None when the child sent one that does not decode: that reply
        is dropped and counted (`bad_replies`), and the link stays up; a bad message is
        no reason to restart a process that holds every running sequence."""
        try:
            return (decode(payload),)
        except MessageDecodeError as exc:
            self.bad_replies += 1
            log.warning("process actor %r sent a bad reply (dropped): %s", self.name, exc)
            return None

    async def _escalate_stop(self, process: trio.Process) -> None:
        await self._stop_event.wait()
        await self._terminate(process)

    async def _terminate(self, process: trio.Process) -> None:
        """Graceful already asked for (Stop frame); now SIGTERM, then SIGKILL."""
        if process.returncode is None and self._stop_requested:
            with trio.move_on_after(self.term_timeout_s):
                await process.wait()
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(self.term_timeout_s):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if process.stdin is not None:
            await process.stdin.aclose()
