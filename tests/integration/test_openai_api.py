"""The OpenAI surface, through the official `openai` client, against the real model."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def ask(server: RunningServer, content: str, **kwargs):
    return client(server).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_models_and_health(server: RunningServer) -> None:
    assert [m.id for m in client(server).models.list()] == [MODEL_ID]
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"


def test_chat_non_streaming_has_usage_and_length_finish(server: RunningServer) -> None:
    reply = ask(server, "Write a long poem about the sea.", max_tokens=12, temperature=0)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_streaming_equals_non_streaming_at_temperature_zero(server: RunningServer) -> None:
    question = "Name three colors of the rainbow."
    whole = ask(server, question, max_tokens=40, temperature=0)
    stream = ask(
        server,
        question,
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and not usage_chunks[0].choices
    assert usage_chunks[0].usage.completion_tokens == whole.usage.completion_tokens


def test_max_completion_tokens_is_honoured(server: RunningServer) -> None:
    reply = ask(server, "Count to one hundred.", max_completion_tokens=7, temperature=0)
    assert reply.usage.completion_tokens == 7 and reply.choices[0].finish_reason == "length"


def test_completions_endpoint_streaming_and_not(server: RunningServer) -> None:
    c = client(server)
    whole = c.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=10, temperature=0
    )
    assert whole.choices[0].finish_reason in ("length", "stop")
    streamed = "".join(
        chunk.choices[0].text
        for chunk in c.completions.create(
            model=MODEL_ID,
            prompt="The capital of France is",
            max_tokens=10,
            temperature=0,
            stream=True,
        )
        if chunk.choices
    )
    assert streamed == whole.choices[0].text
    tokens = c.completions.create(
        model=MODEL_ID, prompt=[504, 3575, 282], max_tokens=3, temperature=0
    )
    assert tokens.usage.prompt_tokens == 3


def test_stop_sequence_across_token_boundaries_is_not_leaked(server: RunningServer) -> None:
    question = "Tell me a short story about a brave knight."
    full = ask(server, question, max_tokens=60, temperature=0).choices[0].message.content
    words = full.split()
    assert len(words) > 12, full
    # Two words in the middle: very likely several tokens, including the space between.
    stop = " ".join(words[6:8])
    expected = full[: full.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = ask(
                server, question, max_tokens=60, temperature=0, stop=[stop, "zzzz"], stream=True
            )
            parts, reasons = [], []
            for chunk in chunks:
                parts.append(chunk.choices[0].delta.content or "")
                reasons.append(chunk.choices[0].finish_reason)
            text, reason = "".join(parts), [r for r in reasons if r][0]
        else:
            reply = ask(server, question, max_tokens=60, temperature=0, stop=stop)
            text, reason = reply.choices[0].message.content, reply.choices[0].finish_reason
        assert text == expected
        assert stop not in text and reason == "stop"


def test_seed_reproduces_sampled_output(server: RunningServer) -> None:
    kwargs = dict(
        max_tokens=24,
        temperature=1.2,
        top_p=0.95,
        seed=1234,
        extra_body={"top_k": 50, "min_p": 0.01},
    )
    a = ask(server, "Invent a name for a cat.", **kwargs).choices[0].message.content
    b = ask(server, "Invent a name for a cat.", **kwargs).choices[0].message.content
    assert a == b
    penalized = ask(
        server, "Invent a name for a cat.", presence_penalty=1.5, frequency_penalty=1.0, **kwargs
    )
    assert penalized.usage.completion_tokens > 0


async def test_concurrent_streams_are_batched(server: RunningServer) -> None:
    before_steps = server.metric("inferflux:batch_size_count")
    before_single = server.metric("inferflux:batch_size_bucket", le="1.0")
    c = async_client(server)
    texts: dict[int, str] = {}

    async def one(i: int) -> None:
        stream = await c.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": f"Tell a story about number {i}."}],
            max_tokens=32,
            temperature=0,
            stream=True,
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        texts[i] = "".join(parts)

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(one, i)
    assert len(texts) == 8 and all(texts.values())
    steps = server.metric("inferflux:batch_size_count") - before_steps
    single = server.metric("inferflux:batch_size_bucket", le="1.0") - before_single
    # 8 x 32 tokens in far fewer than 256 steps: most steps carried several sequences.
    assert 0 < steps < 8 * 32 / 2
    assert single < steps / 2


def test_client_disconnect_cancels_generation_and_frees_the_slot(server: RunningServer) -> None:
    generated_before = server.metric("inferflux:generation_tokens_total")
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        timeout=30,
        json={
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 900,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        for i, _ in enumerate(response.iter_lines()):
            if i > 6:
                break  # leave after a few tokens: the connection closes
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.metric("inferflux:num_requests_running") > 0:
        time.sleep(0.05)
    assert server.metric("inferflux:num_requests_running") == 0
    generated = server.metric("inferflux:generation_tokens_total") - generated_before
    assert generated < 300, f"{generated} tokens generated for a client that left"


def test_prefix_reuse_skips_prefill(server: RunningServer) -> None:
    system = "You are a meticulous assistant. " + " ".join(
        f"Rule {i}: always answer politely and precisely about topic {i}." for i in range(30)
    )
    first = client(server).chat.completions.create(
        model=MODEL_ID,
        max_tokens=4,
        temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi!"}],
    )
    computed_before = server.metric("inferflux:prompt_tokens_computed_total")
    second = client(server).chat.completions.create(
        model=MODEL_ID,
        max_tokens=4,
        temperature=0,
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": "What is two plus two?"},
        ],
    )
    computed = server.metric("inferflux:prompt_tokens_computed_total") - computed_before
    assert first.usage.prompt_tokens > 300
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 20
    assert computed <= second.usage.prompt_tokens - cached + 1
    assert computed < 40


def test_bad_inputs_get_openai_errors_and_server_keeps_serving(server: RunningServer) -> None:
    url = f"{server.url}/v1/chat/completions"
    ok = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def post(body: bytes | dict, **headers: str) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.post(url, json=body, timeout=30)
        return httpx.post(
            url, content=body, headers={"content-type": "application/json", **headers}, timeout=30
        )

    cases = [
        (post(b"{not json"), 400, None),
        (post({**ok, "temperature": "hot"}), 400, "temperature"),
        (post({**ok, "max_tokens": -5}), 400, "max_tokens"),
        (post({**ok, "messages": "hello"}), 400, "messages"),
        (post({**ok, "messages": [{"role": "wizard", "content": "x"}]}), 400, "messages[0].role"),
        (post({**ok, "model": "gpt-17"}), 404, "model"),
        (post({**ok, "messages": []}), 400, "messages"),
        (post({**ok, "max_tokens": 5000}), 400, "max_tokens"),
        (post({**ok, "n": 100}), 400, "n"),
        (post(b"[1, 2, 3]"), 400, None),
        (post(b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}'), 400, None),
        (post(b"x" * (9 * 1024 * 1024)), 413, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        if param:
            assert error["param"] == param, error
    long_prompt = "word " * 1200
    response = post({**ok, "messages": [{"role": "user", "content": long_prompt}]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"
    # the official client maps these to its exception types
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError):
        ask(server, "x", max_tokens=100_000)
    assert httpx.get(f"{server.url}/v1/nothing-here").status_code == 404
    assert httpx.get(f"{server.url}/v1/nothing-here").json()["error"]["code"] == "not_found"
    # and everyone else is still served
    assert ask(server, "Say yes.", max_tokens=3).usage.completion_tokens > 0


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(
            st.sampled_from(
                [
                    "model",
                    "messages",
                    "max_tokens",
                    "temperature",
                    "stop",
                    "stream",
                    "n",
                    "top_p",
                    "seed",
                    "prompt",
                ]
            ),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=20),
                st.lists(st.text(max_size=5), max_size=3),
            ),
            max_size=6,
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_fuzzed_bodies_never_get_a_server_error(server: RunningServer, body: bytes) -> None:
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = httpx.post(
            f"{server.url}{path}",
            content=body,
            timeout=30,
            headers={"content-type": "application/json"},
        )
        assert response.status_code < 500, (body, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-3, 3),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=5),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            k: anything
            for k in [
                "temperature",
                "top_p",
                "top_k",
                "min_p",
                "seed",
                "stop",
                "stream",
                "presence_penalty",
                "frequency_penalty",
                "priority",
                "user",
                "n",
            ]
        },
    ),
    content=st.text(max_size=30),
    max_tokens=st.integers(1, 4),
)
def test_fuzzed_valid_requests_generate_or_get_a_4xx(
    server: RunningServer, fields: dict, content: str, max_tokens: int
) -> None:
    body = {
        "model": MODEL_ID,
        "max_tokens": max_tokens,
        **fields,
        "messages": [{"role": "user", "content": content}],
    }
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code < 500, (body, response.text)
    if response.status_code == 200 and not body.get("stream"):
        assert response.json()["usage"]["completion_tokens"] <= max_tokens


def test_worker_runs_in_its_own_process_with_a_recognizable_command_line(
    server: RunningServer,
) -> None:
    import subprocess

    found = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "inferflux-worker"],
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip(), "no inferflux-worker child process"


def test_streamed_utf8_is_never_split(server: RunningServer) -> None:
    # Ask for emoji and accents: byte-level BPE splits them over several tokens.
    stream = ask(
        server,
        "Reply with five emoji and the word café, repeated.",
        max_tokens=60,
        temperature=0.8,
        seed=7,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            content = chunk.choices[0].delta.content
            assert "\ufffd" not in content
            json.dumps(content)  # valid text
