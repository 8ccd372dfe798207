"""Transport benchmark: round-trip latency and one-way throughput per scheme, and the
in-process choice (the direct path vs nng inproc://) at 16 concurrent streams.

    python tools/bench_transport.py [--round-trips 5000] [--schemes inproc,ipc,tcp]
    python tools/bench_transport.py --in-process [--streams 16]

Both ends run in one Trio process (the echo side is a task), which is how actors in one
node talk; ipc and tcp still cross the kernel. `--in-process` drives one actor through
the runtime itself (tools/bench_in_process.py): ActorRef calls and streams from 16
concurrent tasks, by the direct path (Trio memory channels, objects passed as they are),
the same with every message encoded and decoded (the wire check), and over a node link
on nng inproc://. Prints tables; copy them into docs/benchmarks.md / docs/actors.md with
the machine described.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Union

import msgspec
import trio

from transports import Channel, Codec, unique_address


class Ping(msgspec.Struct, tag=True, array_like=True, gc=False):
    n: int
    body: bytes = b""


Message = Union[Ping]
codec: Codec[Message] = Codec(Message)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def round_trip(scheme: str, count: int) -> tuple[float, float]:
    with Channel.listen(unique_address(scheme, "bench"), codec) as server:
        with Channel.dial(server.address, codec) as client:
            await client.wait_connected(5)

            async def echo() -> None:
                while True:
                    await server.send_bytes(await server.receive_bytes())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                payload = codec.encode(Ping(0))
                samples = []
                for i in range(count + 200):
                    start = time.perf_counter()
                    await client.send_bytes(payload)
                    codec.decode(await client.receive_bytes())
                    if i >= 200:  # warm-up
                        samples.append(time.perf_counter() - start)
                nursery.cancel_scope.cancel()
    return percentile(samples, 0.5) * 1e6, percentile(samples, 0.99) * 1e6


def nng_floor(scheme: str, count: int) -> float:
    """RTT p50 (us) of bare pynng with blocking calls in two OS threads: nng's own floor on
    this machine, to tell what the Trio integration adds."""
    import threading

    import pynng

    address = str(unique_address(scheme, "floor")).replace(
        "tcp://127.0.0.1:0", "tcp://127.0.0.1:47391"
    )
    with pynng.Pair0(listen=address) as server, pynng.Pair0(dial=address) as client:

        def echo() -> None:
            try:
                while True:
                    server.send(server.recv())
            except pynng.Closed:
                pass

        threading.Thread(target=echo, daemon=True).start()
        samples = []
        for i in range(count + 200):
            start = time.perf_counter()
            client.send(b"x")
            client.recv()
            if i >= 200:
                samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5) * 1e6


async def one_way(scheme: str, size: int, count: int) -> tuple[float, float]:
    with Channel.listen(unique_address(scheme, "bench"), codec) as receiver:
        with Channel.dial(receiver.address, codec, send_timeout_s=30) as sender:
            await sender.wait_connected(5)
            data = codec.encode(Ping(0, b"x" * size))
            done = trio.Event()
            elapsed = 0.0

            async def drain() -> None:
                nonlocal elapsed
                await receiver.receive_bytes()
                start = time.perf_counter()
                for _ in range(count - 1):
                    codec.decode(await receiver.receive_bytes())
                elapsed = time.perf_counter() - start
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                for _ in range(count):
                    await sender.send_bytes(data)
                await done.wait()
    rate = (count - 1) / elapsed
    return rate, rate * len(data) / 1e6


async def main(args: argparse.Namespace) -> None:
    if args.in_process:
        from bench_in_process import in_process

        await in_process(args.streams, args.calls, args.items, args.repeats)
        return
    print(
        "| scheme | RTT p50 (us) | RTT p99 (us) | nng floor p50 (us) | 1 KiB msgs/s | 1 KiB MB/s "
        "| 4 MiB msgs/s | 4 MiB MB/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scheme in args.schemes.split(","):
        p50s, p99s = [], []
        for _ in range(args.repeats):
            p50, p99 = await round_trip(scheme, args.round_trips)
            p50s.append(p50)
            p99s.append(p99)
        small_rate, small_mb = await one_way(scheme, 1024, args.small_messages)
        big_rate, big_mb = await one_way(scheme, 4 * 1024 * 1024, args.big_messages)
        floor = await trio.to_thread.run_sync(nng_floor, scheme, args.round_trips)
        print(
            f"| {scheme} | {statistics.median(p50s):.0f} | {statistics.median(p99s):.0f} "
            f"| {floor:.0f} "
            f"| {small_rate:,.0f} | {small_mb:.1f} | {big_rate:.0f} | {big_mb:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="inproc,ipc,tcp")
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many RTT runs")
    parser.add_argument("--small-messages", type=int, default=50000)
    parser.add_argument("--big-messages", type=int, default=40)
    parser.add_argument("--in-process", action="store_true", help="direct path vs inproc")
    parser.add_argument("--streams", type=int, default=16, help="--in-process: concurrency")
    parser.add_argument("--calls", type=int, default=1000, help="--in-process: per task")
    parser.add_argument("--items", type=int, default=5000, help="--in-process: per stream")
    trio.run(main, parser.parse_args())
