"""The load generator: `c` official-openai clients, streaming, each sending requests back
to back. Aggregate tok/s = all completion tokens / wall time; TTFT per request."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import openai
import trio

from .cpu import CpuSnapshot
from .targets import Target
from .workloads import Workload

SERIALS = itertools.count(1)  # numbers every request of a run (workloads.py)


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    prompt_tokens: int


async def one_request(
    client: openai.AsyncOpenAI,
    target: Target,
    messages: list[dict],
    max_tokens: int,
    response_format: dict | None = None,
    ignore_eos: bool = True,
) -> Sample:
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model=target.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": ignore_eos, **target.extra_body},
        **({"response_format": response_format} if response_format else {}),
    )
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not first:
                first = time.perf_counter() - start
            tokens += 1
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return Sample(
        first or (time.perf_counter() - start),
        usage.completion_tokens if usage else tokens,
        usage.prompt_tokens if usage else 0,
    )


def client_for(target: Target) -> openai.AsyncOpenAI:
    # max_retries=2 is the openai client's default: a keep-alive connection a server closed
    # between two requests is retried, as it is for users (llama-server does close some).
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{target.port}/v1", api_key="x", max_retries=2, timeout=600
    )


async def load(
    target: Target,
    concurrency: int,
    rounds: int,
    max_tokens: int,
    workload: Workload | None = None,
    system: str | None = None,
    question: str | None = None,
    response_format: dict | None = None,
) -> dict:
    """`concurrency` clients, `rounds` requests each; `question` (with {topic}) and
    `system` replace the workload's prompt when given."""
    from .workloads import TOPICS, WORKLOADS

    workload = workload or WORKLOADS["free"]
    client = client_for(target)
    samples: list[Sample] = []

    async def user(i: int) -> None:
        for r in range(rounds):
            n = i + r * concurrency
            if question:
                messages = [{"role": "user", "content": question.format(topic=TOPICS[n % 16])}]
            else:
                messages = workload.messages(n, next(SERIALS))
            if system:
                messages = [{"role": "system", "content": system}, *messages]
            samples.append(
                await one_request(
                    client, target, messages, max_tokens, response_format, workload.ignore_eos
                )
            )

    server_pid = target.process.pid if target.process else None
    cpu_before = CpuSnapshot.take(server_pid)
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(user, i)
    wall = time.perf_counter() - start
    tokens = sum(s.tokens for s in samples)
    cpu = CpuSnapshot.take(server_pid).per_token_ms(cpu_before, tokens)
    ttfts = sorted(s.ttft_s for s in samples)
    return {
        "tok_s": sum(s.tokens for s in samples) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "requests": len(samples),
        "tokens": sum(s.tokens for s in samples),
        "prompt_tokens": statistics.mean(s.prompt_tokens for s in samples),
        "wall_s": wall,
        **cpu,
    }


SHARED_SYSTEM = (
    "You are the support assistant of Flux Hardware. Follow these policies. "
    + " ".join(
        f"Policy {i}: when a customer asks about product line {i}, answer "
        f"with its warranty terms, its return window and its safety notes."
        for i in range(40)
    )
)


async def load_shared(target: Target) -> dict:
    """16 concurrent requests sharing SHARED_SYSTEM, after one request warmed the prefix."""
    await load(target, 1, 1, 8, system=SHARED_SYSTEM, question="Tell me about {topic}.")
    return await load(
        target,
        16,
        1,
        32,
        system=SHARED_SYSTEM,
        question="Briefly: what is the warranty for {topic}?",
    )
