"""Images through the official openai client against a real server (issue 16): the default
model with the random-weights test projector (tests/vision_fixture.py). What this shows:
the whole path works (decode, layout, encode, decode into the batch, usage, prefix cache,
recompute, refusals); not that the model understands a picture (random weights)."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator

import httpx
import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.integration.test_worker_crash import worker_pid
from tests.vision_fixture import TOKENS_PER_IMAGE, png, tiny_mmproj

GREEDY = dict(model=MODEL_ID, temperature=0, max_tokens=40, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serving(tmp_path_factory, "vision", 4, "--mmproj", str(tiny_mmproj()))


def data_uri(image: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(image).decode()


def ask(text: str, *uris: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in uris]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def test_an_image_completion_streamed_and_not(vision: RunningServer) -> None:
    c = client(vision)
    text_only = c.chat.completions.create(messages=ask("Describe the picture."), **GREEDY)
    messages = ask("Describe the picture.", data_uri(png(seed=11)))
    images_before = vision.metric("inferflux:images_total")
    encoded_before = vision.metric("inferflux:image_encode_seconds_count", model=MODEL_ID)
    encode_s_before = vision.metric("inferflux:image_encode_seconds_sum", model=MODEL_ID)
    reply = c.chat.completions.create(messages=messages, **GREEDY)
    # The worker's encode time, exported by the scheduler's metrics (the image is new).
    assert vision.metric("inferflux:image_encode_seconds_count", model=MODEL_ID) > encoded_before
    assert vision.metric("inferflux:image_encode_seconds_sum", model=MODEL_ID) > encode_s_before
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 40 and reply.choices[0].message.content
    # prompt_tokens counts the image's positions (and the model's marker text around it).
    assert reply.usage.prompt_tokens >= text_only.usage.prompt_tokens + TOKENS_PER_IMAGE
    assert reply.choices[0].message.content != text_only.choices[0].message.content
    stream = c.chat.completions.create(
        messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == reply.usage.prompt_tokens
    assert vision.metric("inferflux:images_total") == images_before + 2
    assert vision.metric("inferflux:image_prepare_seconds_count") >= 2


async def test_text_only_requests_beside_images_give_their_solo_outputs(
    vision: RunningServer,
) -> None:
    c = openai.AsyncOpenAI(base_url=f"{vision.url}/v1", api_key="x", max_retries=0)
    questions = ["Count from one to ten.", "Name three colours.", "What is a river?"]
    solo = {}
    for q in questions:
        reply = await c.chat.completions.create(messages=ask(q), **GREEDY)
        solo[q] = reply.choices[0].message.content
    image_alone = await c.chat.completions.create(
        messages=ask("What is this?", data_uri(png(seed=12))), **GREEDY
    )
    together: dict[str, str] = {}

    async def one(key: str, messages: list[dict]) -> None:
        reply = await c.chat.completions.create(messages=messages, **GREEDY)
        together[key] = reply.choices[0].message.content

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "image", ask("What is this?", data_uri(png(seed=12))))
        for q in questions:
            nursery.start_soon(one, q, ask(q))
    assert {q: together[q] for q in questions} == solo
    assert together["image"] == image_alone.choices[0].message.content


def test_the_same_image_again_is_a_prefix_hit_another_image_is_not(vision: RunningServer) -> None:
    c = client(vision)
    kwargs = dict(GREEDY, max_tokens=2)
    first = c.chat.completions.create(messages=ask("Look.", data_uri(png(seed=21))), **kwargs)
    again = c.chat.completions.create(messages=ask("Look!", data_uri(png(seed=21))), **kwargs)
    other = c.chat.completions.create(messages=ask("Look.", data_uri(png(seed=22))), **kwargs)
    n = first.usage.prompt_tokens
    assert again.usage.prompt_tokens_details.cached_tokens > TOKENS_PER_IMAGE  # past the image
    # Another picture shares only the text before it (the turn's header, the marker).
    assert other.usage.prompt_tokens == n
    assert other.usage.prompt_tokens_details.cached_tokens < n - TOKENS_PER_IMAGE


BROKEN_PNG = png(seed=3)[:60]


@pytest.mark.parametrize(
    "url, says",
    [
        ("data:image/png;base64,@@@@", "not valid base64"),
        (data_uri(b"not an image at all" * 10), "could not be decoded"),
        (data_uri(BROKEN_PNG), "could not be decoded"),
        (data_uri(png(2400, 2000, solid=True)), "pixels"),
        (data_uri(png(400, 8)), "too narrow"),
        (data_uri(png(fmt="TIFF"), "tiff"), "could not be decoded"),
        ("https://example.com/cat.png", "not fetched"),
        ("file:///etc/passwd", "data: URI"),
    ],
)
def test_bad_images_are_400_naming_the_part(vision: RunningServer, url: str, says: str) -> None:
    body = {"model": MODEL_ID, "max_tokens": 2, "messages": ask("hi", url)}
    reply = httpx.post(f"{vision.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert says in error["message"]
    assert error["param"] == "messages[0].content[0].image_url.url"


def test_too_many_images_and_the_server_keeps_serving(vision: RunningServer) -> None:
    body = {"model": MODEL_ID, "max_tokens": 2, "messages": ask("hi", *[data_uri(png())] * 9)}
    reply = httpx.post(f"{vision.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400 and "at most 8 images" in reply.json()["error"]["message"]
    ok = client(vision).chat.completions.create(messages=ask("hi", data_uri(png())), **GREEDY)
    assert ok.choices[0].message.content


def test_a_model_without_a_projector_refuses_images_naming_it(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(messages=ask("hi", data_uri(png())), **GREEDY)
    error = caught.value.body
    assert MODEL_ID in error["message"] and "projector" in error["message"]
    assert error["param"] == "messages[0].content[0].image_url.url"


async def test_sigkill_mid_stream_with_an_image_gives_the_same_text(vision: RunningServer) -> None:
    c = openai.AsyncOpenAI(base_url=f"{vision.url}/v1", api_key="x", max_retries=0)
    kwargs = dict(GREEDY, max_tokens=120)
    messages = ask("Tell me about this picture.", data_uri(png(seed=31)))
    reference = (await c.chat.completions.create(messages=messages, **kwargs)).choices[0]
    first_pid = worker_pid(vision)
    received: list[str] = []
    stream = await c.chat.completions.create(messages=messages, stream=True, **kwargs)
    finish = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
            if len(received) == 20:
                os.kill(first_pid, signal.SIGKILL)  # the image is re-encoded by the new worker
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert "".join(received) == reference.message.content
    assert finish == "length"
    assert worker_pid(vision) != first_pid
