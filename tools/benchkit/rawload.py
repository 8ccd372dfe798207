"""A load generator light enough not to be the bottleneck at thousands of tokens a second:
raw HTTP/1.1 over Trio sockets, the SSE body read in large pieces and never parsed except
for the final usage. (The official openai client, which tools/bench.py uses, costs about
0.5 ms of CPU a token here: at 5,000 tok/s it would need more cores than this machine
has.)"""

from __future__ import annotations

import json
import re
import statistics
import time

import trio

USAGE = re.compile(rb'"completion_tokens":\s*(\d+)')


async def one_stream(port: int, body: bytes) -> tuple[int, float]:
    """(completion tokens, seconds to the first body byte) of one streamed request."""
    start = time.perf_counter()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer x\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    first = 0.0
    tail = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head + body)
        while data := await stream.receive_some(1 << 16):
            if not first:
                first = time.perf_counter() - start
            tail = (tail + data)[-4096:]
            if tail.endswith(b"\r\n0\r\n\r\n"):  # the chunked body's end (kept alive)
                break
    found = USAGE.findall(tail)
    if not found:
        raise RuntimeError(f"no usage at the end of the stream: {tail[-300:]!r}")
    return int(found[-1]), first


async def raw_load(port: int, model: str, concurrency: int, rounds: int, max_tokens: int) -> dict:
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
    ).encode()
    tokens: list[int] = []
    firsts: list[float] = []

    async def client() -> None:
        for _ in range(rounds):
            n, first = await one_stream(port, body)
            tokens.append(n)
            firsts.append(first)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    wall = time.perf_counter() - start
    return {
        "tok_s": sum(tokens) / wall,
        "tokens": sum(tokens),
        "ttft_p50": statistics.median(firsts),
        "wall_s": wall,
    }
