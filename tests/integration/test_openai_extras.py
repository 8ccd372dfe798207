"""logit_bias (ban and force tokens, bad values answer 400) and the /tokenize and
/detokenize extras, through the official client and plain HTTP, against the real model."""

from __future__ import annotations

import math

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


def test_n_choices_share_the_prompt_and_differ(server: RunningServer) -> None:
    c = client(server)
    prompt = "Write a short poem about rivers and mountains, please. " * 6
    messages = [{"role": "user", "content": prompt}]
    before = server.metric("inferflux:prompt_tokens_computed_total")
    reply = c.chat.completions.create(
        model=MODEL_ID, messages=messages, n=3, max_tokens=12, temperature=1.0, seed=7
    )
    computed = server.metric("inferflux:prompt_tokens_computed_total") - before
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in reply.choices]
    assert len(set(texts)) > 1  # each choice samples with its own seed
    assert reply.usage.completion_tokens == 36
    # The prompt was prefilled once: the other two choices copied its KV cells.
    assert computed < 1.5 * reply.usage.prompt_tokens
    again = c.chat.completions.create(
        model=MODEL_ID, messages=messages, n=3, max_tokens=12, temperature=1.0, seed=7
    )
    assert [choice.message.content for choice in again.choices] == texts

    chunks: dict[int, str] = {0: "", 1: "", 2: ""}
    finishes = {}
    for chunk in c.chat.completions.create(
        model=MODEL_ID, messages=messages, n=3, max_tokens=12, temperature=1.0, seed=7, stream=True
    ):
        for choice in chunk.choices:
            chunks[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [chunks[i] for i in range(3)] == texts
    assert finishes == {0: "length", 1: "length", 2: "length"}


def test_chat_logprobs(server: RunningServer) -> None:
    kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    reply = client(server).chat.completions.create(**kwargs)
    choice = reply.choices[0]
    entries = choice.logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert "".join(e.token for e in entries) == choice.message.content
    for entry in entries:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert entry.logprob == pytest.approx(tops[0])  # greedy takes the likeliest
        assert entry.token == entry.top_logprobs[0].token
        assert sum(math.exp(lp) for lp in tops) <= 1.0 + 1e-6
        assert bytes(entry.bytes).decode() == entry.token
    streamed = [
        e
        for chunk in client(server).chat.completions.create(stream=True, **kwargs)
        if chunk.choices and chunk.choices[0].logprobs
        for e in chunk.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client(server).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(server: RunningServer) -> None:
    reply = client(server).completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs) == 6
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) == pytest.approx(logprob) and logprob <= 0
        assert token in top


@pytest.mark.parametrize(
    "path, extra, param",
    [
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/v1/completions", {"logprobs": 6}, "logprobs"),
        ("/v1/chat/completions", {"n": 65}, "n"),
        ("/v1/completions", {"n": 0}, "n"),
    ],
)
def test_bad_logprobs_and_n_are_400(server: RunningServer, path, extra, param) -> None:
    body = {"model": MODEL_ID, "max_tokens": 2, **extra}
    if "chat" in path:
        body["messages"] = [{"role": "user", "content": "x"}]
    else:
        body["prompt"] = "x"
    reply = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_echo_with_logprobs_offsets_count_the_prompt(server: RunningServer) -> None:
    prompt = "The capital of France is"
    reply = client(server).completions.create(
        model=MODEL_ID, prompt=prompt, max_tokens=4, temperature=0, logprobs=1, echo=True
    )
    choice = reply.choices[0]
    assert choice.text.startswith(prompt)
    assert choice.logprobs.text_offset[0] == len(prompt)
    assert choice.text[len(prompt) :] == "".join(choice.logprobs.tokens)


@pytest.mark.parametrize("key", ["--5", "²", "5.0", " 5"])
def test_odd_logit_bias_keys_are_400(server: RunningServer, key: str) -> None:
    body = {"model": MODEL_ID, "prompt": "x", "max_tokens": 1, "logit_bias": {key: 1}}
    reply = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "logit_bias"
