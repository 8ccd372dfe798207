"""Entry point of a process actor's child: `python -m actors._child inferflux-ROLE ...`.

The first argument only labels the command line (ps, pgrep, inferflux-top). The child dials
the parent's address, says Hello, runs the actor, and relays frames: the parent's requests
to the actor, the actor's asks to the parent's actors it imports (actors/_imports.py), and
the actor's details() for introspection. It exits when the parent closes its stdin pipe
(the parent died) or sends Stop.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import msgspec
import trio

from transports import Channel, ChannelClosed, MessageDecodeError

from ._envelope import Envelope, ReplyItem
from ._imports import ParentAsks
from ._link import (
    DETAILS_EVERY_S,
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
from ._node_wire import fail_frame
from ._registry import Registry

PARENT_GONE_EXIT_CODE = 70


async def _watch_parent() -> None:
    """Exit at once when the parent's end of our stdin closes: the parent is gone."""
    while True:
        await trio.lowlevel.wait_readable(0)
        if not os.read(0, 4096):
            os._exit(PARENT_GONE_EXIT_CODE)


async def _relay_replies(
    channel: Channel[Any],
    correlation_id: int,
    replies: trio.MemoryReceiveChannel[ReplyItem],
    codecs: PayloadCodecs,
) -> None:
    encode = codecs.replies.encode
    async with replies:
        async for kind, value in replies:
            if kind == "item":
                await channel.send(Item(correlation_id, msgspec.Raw(encode(value))))
            elif kind == "done":
                await channel.send(Done(correlation_id, msgspec.Raw(encode(value))))
                return
            else:
                await channel.send(fail_frame(correlation_id, value, codecs))
                return
        await channel.send(Fail(correlation_id, "ActorUnavailable", "stream dropped"))


async def _report_details(channel: Channel[Any], actor: Any) -> None:
    """The actor's details() to the parent whenever they change (for introspection)."""
    last: dict[str, Any] | None = None
    while True:
        details = actor.details()
        if details != last:
            await channel.send(Details(details))
            last = details
        await trio.sleep(DETAILS_EVERY_S)


async def serve(
    name: str,
    address: str,
    target: str,
    options: dict[str, Any],
    imports: dict[str, str] | None = None,
) -> None:
    actor_class = import_target(target)
    codecs = PayloadCodecs(actor_class)
    registry = Registry()
    actor = actor_class(name, in_registry=registry, **options)
    with Channel.dial(address, frame_codec, peer_label="parent") as channel:
        await channel.wait_connected(timeout_s=30)
        asks = ParentAsks(channel)
        asks.register(registry, imports or {})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_parent)
            nursery.start_soon(asks.run)
            relays = _RelayCount()

            async def run_actor(task_status: trio.TaskStatus[None]) -> None:
                await actor.run(task_status=task_status)
                # Graceful stop: let final replies reach the parent, then leave.
                with trio.move_on_after(2):
                    await relays.wait_idle()
                nursery.cancel_scope.cancel()

            await nursery.start(run_actor)
            await channel.send(Hello(os.getpid()))
            asks.open()
            nursery.start_soon(_report_details, channel, actor)
            while True:
                try:
                    frame = await channel.receive()
                except MessageDecodeError as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
                    continue
                except ChannelClosed:
                    break
                match frame:
                    case Cast(payload):
                        try:
                            message = codecs.messages.decode(payload, "parent")
                        except MessageDecodeError as exc:
                            print(f"{name}: {exc}", file=sys.stderr)
                            continue
                        await actor.mailbox.put(Envelope(message))
                    case Call(correlation_id, payload, stream):
                        try:
                            message = codecs.messages.decode(payload, "parent")
                        except MessageDecodeError as exc:
                            await channel.send(Fail(correlation_id, "MessageDecodeError", str(exc)))
                            continue
                        send, receive = trio.open_memory_channel[ReplyItem](100_000)
                        kind = "stream" if stream else "call"
                        await actor.mailbox.put(Envelope(message, kind, send, correlation_id))
                        nursery.start_soon(
                            relays.run, _relay_replies(channel, correlation_id, receive, codecs)
                        )
                    case Stop():
                        actor.request_stop()
                    case InjectCrash():
                        actor.inject_crash()
                    case Item() | Done() | Fail() | Refused():
                        asks.answer(frame)  # to one of our asks (imports)


class _RelayCount:
    """Counts reply relays in flight so a graceful stop can wait for them to flush."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = trio.Event()

    async def run(self, relay: Any) -> None:
        self.active += 1
        try:
            await relay
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()
                self._idle = trio.Event()

    async def wait_idle(self) -> None:
        while self.active:
            await self._idle.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="actors._child")
    parser.add_argument("label", help="inferflux-ROLE, for ps and pgrep")
    parser.add_argument("--name", required=True)
    parser.add_argument("--connect", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--options", default="{}")
    parser.add_argument("--imports", default="{}", help="JSON: name -> pkg.module:Class")
    args = parser.parse_args(argv)
    options, imports = json.loads(args.options), json.loads(args.imports)
    try:
        trio.run(serve, args.name, args.connect, args.target, options, imports)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
