"""Images through the agent APIs (issue 17): the Responses API's `input_image` parts and the
Anthropic Messages API's `image` blocks, through the official `openai` and `anthropic`
SDKs against a real server with the random-weights test projector (tests/vision_fixture.py).

Both are read into chat image parts and take chat's one image path (ingress/images.py), so
the same image and text give exactly the chat completion's answer and usage; a bad image is
a 400 in each API's own error shape naming the client's own field."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.vision_fixture import TOKENS_PER_IMAGE, png, tiny_mmproj

pytestmark = pytest.mark.model

QUESTION = "Describe the picture."
N = 24


@pytest.fixture(scope="module")
def vision(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serving(tmp_path_factory, "agent-vision", 2, "--mmproj", str(tiny_mmproj()))


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def chat_answer(server: RunningServer, image: bytes) -> tuple[str, int]:
    """What chat completions answer to the image and QUESTION: (text, prompt_tokens)."""
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    uri = "data:image/png;base64," + b64(image)
    parts = [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": QUESTION}]
    reply = c.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": parts}], temperature=0,
        max_tokens=N, extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert reply.usage is not None and reply.choices[0].message.content
    return reply.choices[0].message.content, reply.usage.prompt_tokens


def responses_input(image: bytes) -> list[dict]:
    uri = "data:image/png;base64," + b64(image)
    parts = [
        {"type": "input_image", "image_url": uri, "detail": "auto"},
        {"type": "input_text", "text": QUESTION},
    ]
    return [{"role": "user", "content": parts}]


def anthropic_content(image: bytes) -> list[dict]:
    source = {"type": "base64", "media_type": "image/png", "data": b64(image)}
    return [{"type": "image", "source": source}, {"type": "text", "text": QUESTION}]


def test_responses_input_image_streamed_and_not(vision: RunningServer) -> None:
    image = png(seed=41)
    text, prompt_tokens = chat_answer(vision, image)
    assert prompt_tokens > TOKENS_PER_IMAGE
    c = openai.OpenAI(base_url=f"{vision.url}/v1", api_key="x", max_retries=0)
    kwargs = dict(
        model=MODEL_ID, input=responses_input(image), temperature=0, max_output_tokens=N,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    reply = c.responses.create(**kwargs)  # type: ignore[call-overload]
    assert reply.output_text == text and reply.status == "incomplete"
    assert reply.usage is not None and reply.usage.input_tokens == prompt_tokens
    deltas, final = [], None
    for event in c.responses.create(stream=True, **kwargs):  # type: ignore[call-overload]
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.incomplete":  # max_output_tokens reached
            final = event.response
    assert "".join(deltas) == text
    assert final is not None and final.output_text == text
    # The image is kept with a stored response: continuing it shows the model the image.
    follow = c.responses.create(
        model=MODEL_ID, input="And again?", previous_response_id=reply.id, max_output_tokens=2
    )
    assert follow.usage is not None and follow.usage.input_tokens > prompt_tokens + N


def test_anthropic_image_block_streamed_and_not(vision: RunningServer) -> None:
    image = png(seed=42)
    text, prompt_tokens = chat_answer(vision, image)
    claude = anthropic.Anthropic(base_url=vision.url, api_key="x", max_retries=0)
    messages = [{"role": "user", "content": anthropic_content(image)}]
    kwargs = dict(
        model=MODEL_ID, max_tokens=N, messages=messages,
        extra_body={"temperature": 0, "ignore_eos": True},
    )  # fmt: skip
    reply = claude.messages.create(**kwargs)  # type: ignore[call-overload]
    assert reply.content[0].text == text and reply.stop_reason == "max_tokens"
    usage = reply.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == prompt_tokens
    with claude.messages.stream(**kwargs) as stream:  # type: ignore[arg-type]
        assert stream.get_final_text() == text
    counted = claude.messages.count_tokens(model=MODEL_ID, messages=messages)  # type: ignore[arg-type]
    assert counted.input_tokens == prompt_tokens


def bad_responses(server: RunningServer, part: dict) -> dict:
    c = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    content = [{"type": "input_text", "text": "hi"}, part]
    with pytest.raises(openai.BadRequestError) as caught:
        c.responses.create(
            model=MODEL_ID, instructions="Be brief.", max_output_tokens=2,
            input=[{"role": "user", "content": "first"}, {"role": "user", "content": content}],
        )  # fmt: skip
    assert isinstance(caught.value.body, dict)
    return caught.value.body


@pytest.mark.parametrize(
    "part, param, says",
    [
        ({"type": "input_image", "image_url": "data:image/png;base64,@@@@"},
         "input[1].content[1].image_url", "not valid base64"),
        ({"type": "input_image", "image_url": "data:image/png;base64," + b64(png(400, 8))},
         "input[1].content[1].image_url", "too narrow"),
        ({"type": "input_image", "image_url": "https://example.com/cat.png"},
         "input[1].content[1].image_url", "not fetched"),
        ({"type": "input_image", "file_id": "file-123"},
         "input[1].content[1].file_id", "Files API"),
        ({"type": "input_image", "image_url": "data:,", "detail": "huge"},
         "input[1].content[1].detail", "Invalid enum value"),
    ],
)  # fmt: skip
def test_bad_responses_images_are_400_naming_the_input_path(
    vision: RunningServer, part: dict, param: str, says: str
) -> None:
    error = bad_responses(vision, part)
    assert error["param"] == param and says in error["message"], error


def bad_message(server: RunningServer, block: dict) -> anthropic.BadRequestError:
    claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    content = [{"type": "text", "text": "hi"}, block]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=MODEL_ID, max_tokens=2, system="Be brief.",
            messages=[{"role": "user", "content": "first"},
                      {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": content}],  # type: ignore[list-item]
        )  # fmt: skip
    return caught.value


@pytest.mark.parametrize(
    "source, param, says",
    [
        ({"type": "base64", "media_type": "image/png", "data": "@@@@"},
         "messages[2].content[1].source.data", "not valid base64"),
        ({"type": "base64", "media_type": "image/png", "data": b64(b"not an image" * 10)},
         "messages[2].content[1].source.data", "could not be decoded"),
        ({"type": "base64", "media_type": "image/tiff", "data": b64(png(fmt="TIFF"))},
         "messages[2].content[1].source.media_type", "Invalid enum value"),
        ({"type": "url", "url": "https://example.com/cat.png"},
         "messages[2].content[1].source.url", "not fetched"),
        ({"type": "file", "file_id": "file_123"},
         "messages[2].content[1].source", "Files API"),
    ],
)  # fmt: skip
def test_bad_anthropic_images_are_400_in_anthropics_shape(
    vision: RunningServer, source: dict, param: str, says: str
) -> None:
    error = bad_message(vision, {"type": "image", "source": source})
    assert error.status_code == 400
    body = error.body
    assert isinstance(body, dict) and set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "invalid_request_error"
    message = body["error"]["message"]
    assert message.startswith(f"{param}:") and says in message, message


def test_too_many_images_and_the_server_keeps_serving(vision: RunningServer) -> None:
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": b64(png())}}  # fmt: skip
    body = {"model": MODEL_ID, "max_tokens": 2, "messages": [
        {"role": "user", "content": [block] * 9 + [{"type": "text", "text": "hi"}]}]}  # fmt: skip
    reply = httpx.post(f"{vision.url}/v1/messages", json=body, timeout=30)
    assert reply.status_code == 400 and "at most 8 images" in reply.text, reply.text
    assert reply.json()["error"]["message"].startswith("messages[0].content[0].source.data:")
    text, _ = chat_answer(vision, png(seed=43))
    assert text
