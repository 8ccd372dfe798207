"""The chaos harness's request mix (seeded) and the clients that drive it through the
official openai client, recording one outcome per request."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import httpx
import openai
import trio

PROFILES = {
    # requests, concurrency, nemesis period (s), max_tokens range
    "ci": dict(requests=90, concurrency=6, period=(1.5, 3.0), max_tokens=(16, 48)),
    "soak": dict(requests=400, concurrency=8, period=(1.0, 5.0), max_tokens=(16, 128)),
}
PROMPTS = [
    "Write a short story about a fox.",
    "Explain how rain forms.",
    "Describe a castle at night.",
    "List three uses of copper.",
    "What is a prime number?",
    "Give advice to a new gardener.",
    "Why is the sky blue?",
    "Describe the taste of an apple.",
]


# Some requests are constrained by a JSON schema: their grammar state must survive every
# fault too (rebuilt from the sent tokens on recompute).
STRUCTURED = {
    "type": "json_schema",
    "json_schema": {
        "name": "note",
        "schema": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "maxLength": 30},
                "mood": {"enum": ["calm", "curious", "tense"]},
                "points": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 40},
                    "minItems": 1,
                    "maxItems": 4,
                },
            },
            "required": ["topic", "mood", "points"],
            "additionalProperties": False,
        },
    },
}


def make_jobs(rng: random.Random, profile: dict) -> list[Job]:
    jobs = []
    # A separate stream for the structured choice keeps a seed's other draws unchanged.
    structured = random.Random(rng.random())
    for i in range(profile["requests"]):
        sampled = rng.random() < 0.25
        sampling: dict = (
            {"temperature": 0.8, "seed": rng.randint(0, 10_000)} if sampled else {"temperature": 0}
        )
        if structured.random() < 0.15:
            sampling["response_format"] = STRUCTURED
        jobs.append(
            Job(
                i,
                rng.choice(PROMPTS),
                rng.randint(*profile["max_tokens"]),
                stream=rng.random() < 0.75,
                sampling=sampling,
                hang_up_after=rng.choice([0] * 6 + [3, 8]),
            )
        )
    return jobs


@dataclass
class Job:
    index: int
    prompt: str
    max_tokens: int
    stream: bool
    sampling: dict
    hang_up_after: int  # streamed chunks before the client disconnects; 0: never


@dataclass
class Outcome:
    kind: str  # completed | hung_up | error
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    detail: str = ""


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    outcomes: dict[int, list[Outcome]] = field(default_factory=dict)


async def drive(url: str, model: str, jobs: list[Job], concurrency: int, report: Report) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    limiter = trio.Semaphore(concurrency)

    async def one(job: Job) -> None:
        async with limiter:
            outcome = await run_job(client, model, job)
            report.outcomes.setdefault(job.index, []).append(outcome)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)


async def run_job(client: openai.AsyncOpenAI, model: str, job: Job) -> Outcome:
    messages = [{"role": "user", "content": job.prompt}]
    kwargs = dict(model=model, messages=messages, max_tokens=job.max_tokens, **job.sampling)
    try:
        if not job.stream:
            reply = await client.chat.completions.create(**kwargs)
            choice = reply.choices[0]
            return Outcome(
                "completed",
                choice.message.content or "",
                choice.finish_reason,
                reply.usage.completion_tokens,
            )
        parts, finish, tokens, chunks = [], "", 0, 0
        stream = await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                    chunks += 1
                    if job.hang_up_after and chunks >= job.hang_up_after:
                        return Outcome("hung_up", "".join(parts))
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        return Outcome("completed", "".join(parts), finish, tokens)
    except (openai.APIError, httpx.HTTPError) as exc:
        return Outcome("error", detail=f"{type(exc).__name__}: {exc}")
