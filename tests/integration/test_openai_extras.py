"""logit_bias (ban and force tokens, bad values answer 400) and the /tokenize and
/detokenize extras, through the official client and plain HTTP, against the real model."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def tokenize(server: RunningServer, **body) -> dict:
    reply = httpx.post(f"{server.url}/tokenize", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_tokenize_detokenize_round_trip(server: RunningServer) -> None:
    text = "Hello, naïve world: 東京!"
    tokens = tokenize(server, prompt=text)
    assert tokens["count"] == len(tokens["tokens"]) > 3 and tokens["max_model_len"] == 1024
    back = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back["prompt"].endswith(text)
    # Chat messages count exactly what a chat completion's prompt has.
    messages = [{"role": "user", "content": "Count me"}]
    chat = tokenize(server, model=MODEL_ID, messages=messages)
    reply = client(server).chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=1)
    assert chat["count"] == reply.usage.prompt_tokens


@pytest.mark.parametrize(
    "path, body, status, says",
    [
        ("/tokenize", {"prompt": "a", "messages": []}, 400, "exactly one"),
        ("/tokenize", {}, 400, "exactly one"),
        ("/tokenize", {"prompt": 3}, 400, "prompt"),
        ("/tokenize", {"prompt": "a", "model": "nope"}, 404, "does not exist"),
        ("/detokenize", {"tokens": [-1]}, 400, "out of range"),
        ("/detokenize", {"tokens": [10**9]}, 400, "out of range"),
        ("/detokenize", {}, 400, "tokens"),
    ],
)
def test_extras_reject_bad_input(server: RunningServer, path, body, status, says) -> None:
    reply = httpx.post(f"{server.url}{path}", json=body)
    assert reply.status_code == status
    assert says in reply.json()["error"]["message"]


def test_logit_bias_bans_and_forces_tokens(server: RunningServer) -> None:
    c = client(server)
    kwargs = dict(model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0)
    plain = c.completions.create(**kwargs)
    first = tokenize(server, prompt=plain.choices[0].text)["tokens"]
    bos = tokenize(server, prompt="")["tokens"]
    first_token = first[len(bos)]
    banned = c.completions.create(**kwargs, logit_bias={str(first_token): -100})
    banned_tokens = tokenize(server, prompt=banned.choices[0].text)["tokens"][len(bos) :]
    assert banned_tokens[0] != first_token
    forced_token = tokenize(server, prompt=" banana")["tokens"][len(bos)]
    forced = c.completions.create(**kwargs, logit_bias={str(forced_token): 100})
    piece = httpx.post(f"{server.url}/detokenize", json={"tokens": [forced_token]}).json()
    assert forced.choices[0].text == piece["prompt"] * 4


@pytest.mark.parametrize("bias", [{"abc": 1}, {"-3": 1}, {"5": 101}, {"5": -250}])
def test_logit_bias_out_of_range_is_400(server: RunningServer, bias: dict) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client(server).chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "x"}], logit_bias=bias
        )
    assert err.value.body["param"] == "logit_bias"


def test_echo_returns_the_prompt_first(server: RunningServer) -> None:
    c = client(server)
    kwargs = dict(model=MODEL_ID, prompt="Once upon a time", max_tokens=5, temperature=0)
    plain = c.completions.create(**kwargs).choices[0].text
    echoed = c.completions.create(**kwargs, echo=True).choices[0].text
    assert echoed == "Once upon a time" + plain
    streamed = "".join(
        chunk.choices[0].text
        for chunk in c.completions.create(**kwargs, echo=True, stream=True)
        if chunk.choices
    )
    assert streamed == echoed
