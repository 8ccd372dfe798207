"""server.image_fetch against a real server and a real local HTTP server (issue 16): an
image URL on a listed host gives exactly the completion of the same image sent inline,
through chat, the Responses API and the Messages API; a host not listed, a redirect, a
body over the cap, a body too slow and a 404 are each a 400 naming the part, and the
server keeps serving. (A server without the setting refuses every URL: test_vision.py,
test_agent_images.py.)"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.image_server import IMAGE, image_server
from tests.vision_fixture import tiny_mmproj

pytestmark = pytest.mark.model

GREEDY = dict(model=MODEL_ID, temperature=0, max_tokens=16, extra_body={"ignore_eos": True})
PARAM = "messages[0].content[0].image_url.url"


@pytest.fixture(scope="module")
def images() -> Iterator[str]:
    with image_server() as base:
        yield base


@pytest.fixture(scope="module")
def fetching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = tmp_path_factory.mktemp("fetch-config") / "fetch.toml"
    config.write_text('[server]\nimage_fetch = ["127.0.0.1"]\nimage_fetch_timeout_s = 1.0\n')
    extra = ("--mmproj", str(tiny_mmproj()), "--config", str(config))
    yield from serving(tmp_path_factory, "fetch", 2, *extra)


def ask(url: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]
    return [{"role": "user", "content": parts}]


def test_a_fetched_image_answers_as_the_same_image_inline(
    fetching: RunningServer, images: str
) -> None:
    c = openai.OpenAI(base_url=f"{fetching.url}/v1", api_key="x", max_retries=0)
    inline = c.chat.completions.create(
        messages=ask("data:image/png;base64," + base64.b64encode(IMAGE).decode()), **GREEDY
    )
    fetched = c.chat.completions.create(messages=ask(f"{images}/cat.png"), **GREEDY)
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    assert fetched.usage is not None and inline.usage is not None
    assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens
    # The agent APIs name URLs the same way and take the same path.
    response = c.responses.create(
        model=MODEL_ID, temperature=0, max_output_tokens=16, extra_body={"ignore_eos": True},
        input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": f"{images}/cat.png", "detail": "auto"},
            {"type": "input_text", "text": "What?"}]}],
    )  # fmt: skip
    assert response.output_text == inline.choices[0].message.content
    claude = anthropic.Anthropic(base_url=fetching.url, api_key="x", max_retries=0)
    message = claude.messages.create(
        model=MODEL_ID, max_tokens=16, extra_body={"temperature": 0, "ignore_eos": True},
        messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": f"{images}/cat.png"}},
            {"type": "text", "text": "What?"}]}],
    )  # fmt: skip
    assert message.content[0].text == inline.choices[0].message.content  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "path, says",
    [
        ("/huge", "larger than 8388608 bytes"),
        ("/huge-declared", "larger than 8388608 bytes"),
        ("/redirect", "redirect"),
        ("/slow", "took over 1 s"),
        ("/stall", "took over 1 s"),
        ("/missing", "HTTP 404"),
        ("localhost", "'localhost' is not one of them"),
    ],
)
def test_fetch_failures_are_400_and_the_server_keeps_serving(
    fetching: RunningServer, images: str, path: str, says: str
) -> None:
    url = (
        images.replace("127.0.0.1", "localhost") + "/cat.png"
        if path == "localhost"
        else images + path
    )
    body = {"model": MODEL_ID, "max_tokens": 2, "messages": ask(url)}
    reply = httpx.post(f"{fetching.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert says in error["message"] and error["param"] == PARAM, error
    ok = httpx.post(
        f"{fetching.url}/v1/chat/completions", timeout=30,
        json={"model": MODEL_ID, "max_tokens": 2, "messages": ask(f"{images}/cat.png")},
    )  # fmt: skip
    assert ok.status_code == 200, ok.text
