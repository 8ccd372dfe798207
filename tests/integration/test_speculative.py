"""Speculative decoding through the whole server, with the official client: the text is the
same as without it (greedy, seeded, under a json_schema), across a SIGKILLed worker too,
and the drafted / accepted counts reach /metrics.

The server here drafts wherever prompt lookup finds a match (adaptive = false), so every
request goes through verification and rollback; the reference is the shared `server`
fixture, which runs with speculation off (the default). Prompts and answers stay under
256 KV cells: past that a sequence decoding alone takes llama.cpp's split-KV attention
kernel, which rounds differently from the multi-row kernel drafts are verified with
(docs/architecture.md)."""

from __future__ import annotations

import os
import signal
import subprocess

import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.streams import stream_chat

pytestmark = pytest.mark.model

# Prompts under 64 tokens with the chat template: a longer prompt's rows land in tiled or
# per-row attention kernels depending on which other prompt shares its first step
# (docs/reliability.md, known limits), with or without speculation.
FRUITS = "apple, banana, cherry, plum, pear, fig"
PROMPTS = [
    f"Repeat this list exactly, one item per line: {FRUITS}.",
    "Copy this code exactly:\ndef area(w, h):\n    return w * h\n\n"
    "def double(x):\n    return 2 * x",
    "Write a short poem about the sea.",
]


@pytest.fixture(scope="module")
def speculative(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    config = tmp_path_factory.mktemp("spec") / "spec.toml"
    config.write_text("[speculative]\nenabled = true\nadaptive = false\nmax_draft_tokens = 6\n")
    yield from serving(tmp_path_factory, "speculative", 4, "--config", str(config))


def client_for(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


async def answer(server: RunningServer, prompt: str, **kwargs) -> str:  # noqa: ANN003
    reply = await client_for(server).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=kwargs.pop("max_tokens", 80),
        **kwargs,
    )
    return reply.choices[0].message.content


async def test_the_same_text_with_and_without_speculation(
    speculative: RunningServer, server: RunningServer
) -> None:
    drafted = speculative.metric("inferflux:spec_decode_num_draft_tokens_total")
    accepted = speculative.metric("inferflux:spec_decode_num_accepted_tokens_total")
    seeded = {"temperature": 0.9, "seed": 42, "top_p": 0.95}
    for prompt in PROMPTS:
        for sampling in ({"temperature": 0}, seeded):
            ours = await answer(speculative, prompt, **sampling)
            assert ours == await answer(server, prompt, **sampling), (prompt, sampling)
    # Concurrent: drafts of several sequences share steps.
    results: dict[str, str] = {}

    async def one(prompt: str) -> None:
        results[prompt] = await answer(speculative, prompt, temperature=0)

    async with trio.open_nursery() as nursery:
        for prompt in PROMPTS:
            nursery.start_soon(one, prompt)
    for prompt in PROMPTS:
        assert results[prompt] == await answer(server, prompt, temperature=0)
    now_drafted = speculative.metric("inferflux:spec_decode_num_draft_tokens_total")
    now_accepted = speculative.metric("inferflux:spec_decode_num_accepted_tokens_total")
    assert now_drafted > drafted and now_accepted > accepted
    rate = speculative.metric("inferflux:spec_decode_acceptance_rate")
    assert rate == pytest.approx(now_accepted / now_drafted)


async def test_json_schema_output_is_unchanged(
    speculative: RunningServer, server: RunningServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"fruits": {"type": "array", "items": {"type": "string"}, "maxItems": 8}},
        "required": ["fruits"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}
    prompt = f"List these fruits as JSON: {FRUITS}."
    ours = await answer(speculative, prompt, temperature=0, response_format=response_format)
    assert ours == await answer(server, prompt, temperature=0, response_format=response_format)
    assert ours.startswith("{")


def worker_pid(server: RunningServer) -> int:
    out = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "inferflux-worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]) if out else 0


async def test_a_killed_worker_resumes_the_same_text(speculative: RunningServer) -> None:
    """The drafter and its statistics die with the worker; the recomputed sequences draft
    again from their own text, and the streams go on exactly as undisturbed ones."""
    kwargs = {"temperature": 0, "max_tokens": 100, "extra_body": {"ignore_eos": True}}
    reference = {p: await answer(speculative, p, **kwargs) for p in PROMPTS[:2]}
    client = client_for(speculative)
    received: dict[str, list[str]] = {p: [] for p in PROMPTS[:2]}

    async def stream(prompt: str) -> None:
        await stream_chat(client, prompt, received[prompt], model=MODEL_ID, **kwargs)

    first = worker_pid(speculative)
    async with trio.open_nursery() as nursery:
        for prompt in received:
            nursery.start_soon(stream, prompt)
        with trio.fail_after(60):
            while min(len(v) for v in received.values()) < 8:
                await trio.sleep(0.005)
        os.kill(first, signal.SIGKILL)
    for prompt, pieces in received.items():
        assert "".join(pieces) == reference[prompt]
    assert worker_pid(speculative) not in (0, first)
