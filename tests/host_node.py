"""A node on a test host (tests/netns.py), driven over stdin/stdout by the test.

    ip netns exec NS python -m tests.host_node --name a --serve tls+tcp://10.231.7.1:0 ...

With `--serve` it runs an EchoActor and opens a door, and prints `{"door": ADDRESS}`.
Then it reads one JSON command per line and answers one JSON line each: join a door
(importing its echo actor), call / stream / a long call in the background (its outcome
printed later as an event, with the time it ended), the link's state and round trip.
Times are `time.monotonic()`: one clock for every namespace of the machine, so the test
can compare them with its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

import trio

from actors import ActorRef, Node, NodeLink, Registry
from tests.support_actors import Count, Echo, EchoActor, Sleep
from transports import TLS


def say(answer: dict[str, Any]) -> None:
    print(json.dumps(answer), flush=True)


def outcome(error: BaseException) -> dict[str, Any]:
    return {"error": type(error).__name__, "message": str(error), "t": time.monotonic()}


class Driver:
    def __init__(self, node: Node, registry: Registry, nursery: trio.Nursery) -> None:
        self.node, self.registry, self.nursery = node, registry, nursery
        self.link: NodeLink | None = None
        self.echo = ActorRef("echo", registry)

    async def command(self, command: dict[str, Any]) -> dict[str, Any]:
        match command["op"]:
            case "join":
                self.link = await self.node.join(command["address"])
                self.link.import_actor("echo", EchoActor)
                await self.link.wait_up(timeout_s=command.get("timeout", 10))
                return {"ok": True}
            case "call":
                started = time.monotonic()
                reply = await self.echo.call(Echo(command["text"]), command.get("timeout", 5))
                return {"ok": reply, "elapsed": time.monotonic() - started}
            case "stream":
                async with self.echo.stream(Count(command["n"])) as items:
                    return {"ok": [item async for item in items]}
            case "sleep_call":  # in the background: its outcome comes later as an event
                self.nursery.start_soon(self._sleep_call, command["id"], command["seconds"])
                return {"ok": True}
            case "link":
                assert self.link is not None
                return {
                    "up": self.link.up,
                    "rtt": self.link.round_trip_s,
                    "downs": self.link.downs,
                }
            case "wait_up":
                assert self.link is not None
                await self.link.wait_up(timeout_s=command["timeout"])
                return {"ok": True, "t": time.monotonic()}
            case "refused":
                return {"refused": self.node.refused_peers}
        raise ValueError(f"unknown op {command['op']!r}")

    async def _sleep_call(self, ident: str, seconds: float) -> None:
        try:
            await self.echo.call(Sleep(seconds), timeout_s=seconds + 60)
            say({"event": ident, "ok": True, "t": time.monotonic()})
        except Exception as exc:
            say({"event": ident, **outcome(exc)})


async def main(args: argparse.Namespace) -> None:
    registry = Registry()
    tls = TLS(*args.tls.split(",")) if args.tls else None
    node = Node(
        args.name,
        registry,
        tls=tls,
        insecure=args.insecure,
        heartbeat_s=args.heartbeat_s,
        down_after_s=args.down_after_s,
        knock_timeout_s=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        if args.serve:
            await nursery.start(EchoActor("echo", in_registry=registry).run)
            say({"door": str(await node.serve(args.serve))})
        driver = Driver(node, registry, nursery)
        stdin = trio.wrap_file(sys.stdin)
        while line := await stdin.readline():
            command = json.loads(line)
            try:
                say(await driver.command(command))
            except Exception as exc:
                say(outcome(exc))
        nursery.cancel_scope.cancel()  # stdin closed: the test is done with us


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--serve", default="")
    parser.add_argument("--tls", default="", help="ca,cert,key")
    parser.add_argument("--insecure", action="store_true", help="plain tcp off loopback")
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--down-after-s", type=float, default=1.5)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    trio.run(main, parser.parse_args())
