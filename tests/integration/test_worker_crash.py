"""A SIGKILLed device worker mid-stream: clients see a pause, not an error, and the text
they receive is exactly the undisturbed run's, token for token: greedy streams, a seeded
sampled one and a constrained (json_schema) one, with finish_reason and usage right.
The recompute prefills prompt + sent tokens in per-slot KV streams, which gives
bit-identical logits."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import anthropic
import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.streams import reference_texts, stream_chat

pytestmark = pytest.mark.model

QUESTIONS = [
    "Write a story about a red fox.",
    "Explain how rain forms.",
    "Describe a castle.",
    "Plan a story.",
]
# A JSON schema no stream completes within max_tokens (8+ chapters).
CHAPTERS = {
    "type": "object",
    "properties": {
        "chapters": {
            "type": "array",
            "minItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 40},
                    "mood": {"enum": ["happy", "sad", "tense"]},
                    "summary": {"type": "string", "maxLength": 120},
                },
                "required": ["title", "mood", "summary"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["chapters"],
    "additionalProperties": False,
}
# Greedy for the first two; the third samples with a seed and a penalty; the fourth
# samples under a json_schema grammar, whose state is rebuilt too.
SAMPLING = [
    {"temperature": 0},
    {"temperature": 0},
    {"temperature": 0.9, "top_p": 0.95, "seed": 1234, "presence_penalty": 0.4},
    {
        "temperature": 0.8,
        "seed": 99,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "plan", "schema": CHAPTERS},
        },
    },
]


def worker_pid(server: RunningServer) -> int:
    pid = current_worker(server)
    assert pid, "no worker process"
    return pid


def current_worker(server: RunningServer) -> int:
    """The worker's pid, 0 while none runs (between a crash and the restart)."""
    out = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "inferflux-worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]) if out else 0


@pytest.fixture(scope="module")
def crash_server(model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from serving(tmp_path_factory, "crash", n_parallel=4)


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(crash_server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{crash_server.url}/v1", api_key="x", max_retries=0)
    kwargs = dict(model=MODEL_ID, max_tokens=150, extra_body={"ignore_eos": True})
    sampling = dict(zip(QUESTIONS, SAMPLING, strict=True))
    reference = {}
    for q in QUESTIONS:  # each with its own sampling
        reference |= await reference_texts(client, [q], **kwargs, **sampling[q])
    first_pid = worker_pid(crash_server)
    received: dict[str, list[str]] = {q: [] for q in QUESTIONS}
    finish: dict[str, tuple[str, int]] = {}

    async def stream(q: str) -> None:
        usage: list[int] = []
        reason = await stream_chat(client, q, received[q], usage, **kwargs, **sampling[q])
        finish[q] = (reason, usage[-1] if usage else -1)

    async with trio.open_nursery() as nursery:
        for q in QUESTIONS:
            nursery.start_soon(stream, q)
        with trio.fail_after(60):
            while min(len(v) for v in received.values()) < 30:
                await trio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)  # mid-stream, every stream ~30 tokens in
        before_kill = {q: "".join(parts) for q, parts in received.items()}

    for q in QUESTIONS:
        got = "".join(received[q])
        assert len(before_kill[q]) > 20
        assert reference[q].startswith(before_kill[q])  # nothing before the kill was wrong

        assert got == reference[q]
        assert finish[q] == ("length", 150)  # exactly max_tokens: none lost, none doubled
    deadline = time.monotonic() + 10
    while worker_pid(crash_server) == first_pid and time.monotonic() < deadline:
        await trio.sleep(0.1)
    assert worker_pid(crash_server) != first_pid
    assert crash_server.metric("inferflux:actor_restarts_total") >= 1


async def test_agent_api_streams_resume_exactly_too(crash_server: RunningServer) -> None:
    """A Responses stream and an Anthropic Messages stream across a SIGKILL: the same
    generation path, so the same recompute, so the same text as undisturbed."""
    responses = openai.AsyncOpenAI(base_url=f"{crash_server.url}/v1", api_key="x", max_retries=0)
    messages = anthropic.AsyncAnthropic(base_url=crash_server.url, api_key="x", max_retries=0)
    extra = {"temperature": 0, "ignore_eos": True}
    ask = dict(model=MODEL_ID, input="Describe a castle.", max_output_tokens=150, extra_body=extra)
    claude = dict(
        model=MODEL_ID, max_tokens=150, extra_body=extra,
        messages=[{"role": "user", "content": "Explain how rain forms."}],
    )  # fmt: skip
    reference = {
        "responses": (await responses.responses.create(**ask)).output_text,
        "messages": (await messages.messages.create(**claude)).content[0].text,
    }
    received: dict[str, list[str]] = {"responses": [], "messages": []}
    final: dict[str, str] = {}

    async def responses_stream() -> None:
        async for event in await responses.responses.create(stream=True, **ask):
            if event.type == "response.output_text.delta":
                received["responses"].append(event.delta)
            elif event.type in ("response.completed", "response.incomplete"):
                final["responses"] = event.response.output_text

    async def messages_stream() -> None:
        async with messages.messages.stream(**claude) as stream:
            async for text in stream.text_stream:
                received["messages"].append(text)
            final["messages"] = (await stream.get_final_message()).content[0].text

    first_pid = worker_pid(crash_server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responses_stream)
        nursery.start_soon(messages_stream)
        with trio.fail_after(60):
            while min(len(v) for v in received.values()) < 30:
                await trio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)
    for api, text in reference.items():
        assert "".join(received[api]) == final[api] == text, api


@pytest.fixture(scope="module")
def fragile_server(model_path: str, tmp_path_factory: pytest.TempPathFactory):
    """A server whose engine gives up after one worker restart within a minute."""
    config = tmp_path_factory.mktemp("fragile") / "fragile.toml"
    config.write_text("[supervision]\nworker_max_restarts = 1\nworker_restart_window_s = 60\n")
    yield from serving(tmp_path_factory, "fragile", 2, "--config", str(config))


async def test_restart_intensity_exceeded_ends_streams_with_503(fragile_server) -> None:
    client = openai.AsyncOpenAI(base_url=f"{fragile_server.url}/v1", api_key="x", max_retries=0)
    kwargs = dict(model=MODEL_ID, max_tokens=400, temperature=0, extra_body={"ignore_eos": True})
    errors: list[openai.APIError] = []
    got_text: list[str] = []  # both streams' deltas

    async def long_stream() -> None:
        try:
            await stream_chat(client, "Tell a long story.", got_text, **kwargs)
        except openai.APIError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(long_stream)
        with trio.fail_after(60):
            while len(got_text) < 10:
                await trio.sleep(0.01)
            first = worker_pid(fragile_server)
            os.kill(first, signal.SIGKILL)  # restart 1: allowed, streams continue
            while current_worker(fragile_server) in (0, first):
                await trio.sleep(0.05)
            second = worker_pid(fragile_server)
            os.kill(second, signal.SIGKILL)  # restart 2 within a minute: the engine gives up
    # Both streams ended with an error event (not a hang, not a silent close).
    assert len(errors) == 2
    assert all("keeps crashing" in str(e) for e in errors), [str(e) for e in errors]
    # A fresh engine comes back (the root restarts it) and serving resumes.
    with trio.fail_after(60):
        while True:
            try:
                reply = await client.chat.completions.create(
                    messages=[{"role": "user", "content": "Hi"}], model=MODEL_ID, max_tokens=4
                )
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503 and exc.response.headers.get("retry-after")
                await trio.sleep(0.2)
    assert reply.choices[0].finish_reason in ("stop", "length")
