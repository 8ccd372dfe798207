"""In-process delivery: the direct path (what ActorRef uses) vs nng inproc://, through the
actor runtime itself, at N concurrent streams (tools/bench_transport.py --in-process).

Three ways to reach one actor in this process:
  direct       ActorRef -> the actor's mailbox, a Trio memory channel; messages and
               replies pass as Python objects, never encoded;
  wire-check   the same, with every message and reply encoded and decoded by the actor's
               protocol (Registry(wire_check=True), $ACTORS_WIRE_CHECK=1);
  nng inproc   a node link over inproc:// (two Nodes in this process): ActorRef ->
               RemoteMailbox -> frames over a pynng Pair0 socket -> the actor.
Two loads each: N tasks making calls one after another (latency, calls/s), and N streams
of many items each (items/s), all at once.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Union

import msgspec
import trio

from actors import Actor, ActorRef, Envelope, Node, Registry
from transports import unique_address


class Ping(msgspec.Struct, tag=True, array_like=True, gc=False):
    n: int


class Burst(msgspec.Struct, tag=True, array_like=True, gc=False):
    """Stream `n` items back."""

    n: int


class Tokens(msgspec.Struct, array_like=True, gc=False):
    """One stream item: a step's tokens for one sequence, as the worker sends them."""

    ids: list[int]


class BenchActor(Actor):
    message_type = Union[Ping, Burst]
    reply_type = Union[int, Tokens]
    mailbox_capacity = 1024

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        match message:
            case Ping(n):
                return n
            case Burst(n):
                item = Tokens([1, 2, 3, 4])
                for _ in range(n):
                    envelope.send(item)
                return n


async def calls(ref: ActorRef, streams: int, per_task: int) -> tuple[float, float, float]:
    latencies: list[float] = []

    async def caller() -> None:
        for i in range(per_task):
            start = time.perf_counter()
            await ref.call(Ping(i), timeout_s=30)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(caller)
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[int(len(latencies) * 0.99)]
    return streams * per_task / elapsed, p50 * 1e6, p99 * 1e6


async def items(ref: ActorRef, streams: int, per_stream: int) -> float:
    async def reader() -> None:
        async with ref.stream(Burst(per_stream), buffer=per_stream + 1) as received:
            async for _ in received:
                pass

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(reader)
    return streams * per_stream / (time.perf_counter() - start)


async def measure(path: str, streams: int, per_task: int, per_stream: int) -> tuple:
    async with trio.open_nursery() as nursery:
        if path == "nng inproc":
            far, near = Registry(wire_check=False), Registry(wire_check=False)
            await nursery.start(BenchActor("bench", in_registry=far).run)
            node_far = await nursery.start(Node("far", far).run)
            door = await node_far.serve(str(unique_address("inproc", "bench-door")))
            node_near = await nursery.start(Node("near", near).run)
            link = await node_near.join(str(door))
            link.import_actor("bench", BenchActor)
            await link.wait_up(timeout_s=10)
            ref = ActorRef("bench", near)
        else:
            registry = Registry(wire_check=path == "wire-check")
            await nursery.start(BenchActor("bench", in_registry=registry).run)
            ref = ActorRef("bench", registry)
        await calls(ref, streams, 50)  # warm-up
        result = (*await calls(ref, streams, per_task), await items(ref, streams, per_stream))
        nursery.cancel_scope.cancel()
    return result


async def in_process(streams: int, per_task: int, per_stream: int, repeats: int) -> None:
    logging.getLogger("actors").setLevel(logging.ERROR)  # links closing between runs
    print(
        f"| path ({streams} concurrent) | calls/s | call p50 (us) | call p99 (us) "
        "| stream items/s |"
    )
    print("|---|---|---|---|---|")
    for path in ("direct", "wire-check", "nng inproc"):
        runs = [await measure(path, streams, per_task, per_stream) for _ in range(repeats)]
        columns = zip(*runs, strict=True)
        rate, p50, p99, item_rate = (statistics.median(column) for column in columns)
        print(f"| {path} | {rate:,.0f} | {p50:.0f} | {p99:.0f} | {item_rate:,.0f} |")
