"""The ingress pipeline and renderers without HTTP or actors: the real tokenizer and chat
template, a decoded request Struct in, a Submit (or an error naming the field) out, and
deltas rendered as the OpenAI client reads them."""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable

import msgspec
import pytest

from inferflux.ingress import pipeline
from inferflux.ingress.chat_render import ChatRenderer
from inferflux.ingress.completion_render import CompletionRenderer
from inferflux.ingress.errors import APIError, from_decode_error
from inferflux.ingress.request_types import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
)
from inferflux.ingress.served import ServedModel
from inferflux.messages import TokenLogprob
from inferflux.model.chat_template import ChatTemplate
from inferflux.scheduler.messages import Delta
from inferflux.worker.llama import Model

pytestmark = pytest.mark.model
ID = "test-model"


@pytest.fixture(scope="module")
def served(model_path: str) -> ServedModel:
    tokenizer = Model(model_path, vocab_only=True)
    return ServedModel(ID, tokenizer, ChatTemplate(tokenizer.info.chat_template), ctx_size=256)


def chat(**fields: object) -> ChatCompletionRequest:
    body = {"model": ID, "messages": [{"role": "user", "content": "Hi"}], **fields}
    return msgspec.json.decode(json.dumps(body), type=ChatCompletionRequest)


def completion(**fields: object) -> CompletionRequest:
    return msgspec.json.decode(json.dumps({"model": ID, **fields}), type=CompletionRequest)


async def refusal(pending: Awaitable[object]) -> APIError:
    with pytest.raises(APIError) as caught:
        await pending
    return caught.value


async def test_a_chat_request_becomes_the_submit_the_scheduler_runs(served: ServedModel) -> None:
    request = chat(temperature=0.5, stop="END", logit_bias={"42": -100}, n=2, priority=3)
    prepared = await pipeline.prepare_chat(served, request)
    # The prompt is what /tokenize shows for the same messages.
    tokenize = TokenizeRequest(messages=request.messages)
    assert prepared.prompt == await pipeline.tokenize(served, tokenize)
    assert prepared.room == 256 - len(prepared.prompt) and prepared.n == 2
    submit = pipeline.submit(prepared, seq_id=7, trace_id="t", ceiling=None)
    assert (submit.seq_id, submit.priority, submit.trace_id) == (7, 3, "t")
    sampling = submit.sampling
    assert sampling.max_tokens == prepared.room  # none asked: the room left
    assert sampling.stop == ("END",) and sampling.logit_bias == ((42, -100.0),)
    assert sampling.temperature == 0.5 and sampling.logprobs == -1
    # The gate's ceiling bounds what is generated; what was asked for is kept below it.
    assert pipeline.submit(prepared, 8, "t", ceiling=10).sampling.max_tokens == 10
    asked = await pipeline.prepare_chat(served, chat(max_tokens=5))
    assert pipeline.submit(asked, 9, "t", ceiling=10).sampling.max_tokens == 5


async def test_chat_checks_name_the_parameter(served: ServedModel) -> None:
    cases = [
        (chat(messages=[]), 400, "messages"),
        (chat(top_logprobs=2), 400, "top_logprobs"),
        (chat(max_tokens=250, messages=[{"role": "user", "content": "x " * 100}]), 400,
         "max_tokens"),
        (chat(max_completion_tokens=300), 400, "max_completion_tokens"),
        (chat(messages=[{"role": "user", "content": "x " * 400}]), 400, "messages"),
        (chat(logit_bias={"49152": 1}), 400, "logit_bias"),
        (chat(tool_choice="required"), 400, "tool_choice"),
    ]  # fmt: skip
    for request, status, param in cases:
        with pytest.raises(APIError) as caught:
            await pipeline.prepare_chat(served, request)
        assert (caught.value.status, caught.value.param) == (status, param), request


def test_typed_fields_are_refused_at_decode_with_their_path() -> None:
    cases = [
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
        ({"tools": [{"function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
         "response_format.json_schema.schema"),
    ]  # fmt: skip
    for fields, param in cases:
        with pytest.raises(msgspec.ValidationError) as caught:
            chat(**fields)
        assert from_decode_error(caught.value).param == param, fields


async def test_completion_prompts(served: ServedModel) -> None:
    prepare = pipeline.prepare_completion
    text = await prepare(served, completion(prompt=["Hello"], echo=True))
    assert text.echo == "Hello" and text.prompt == served.tokenizer.tokenize(
        "Hello", add_special=True, parse_special=False
    )
    ids = await prepare(served, completion(prompt=text.prompt, echo=True))
    assert ids.prompt == text.prompt and ids.echo == served.tokenizer.detokenize(text.prompt)
    assert (await prepare(served, completion(prompt="x", logprobs=0))).want_logprobs
    for prompt in (["a", 1], ["a", "b"], [], [served.n_vocab]):
        error = await refusal(prepare(served, completion(prompt=prompt)))
        assert (error.status, error.param) == (400, "prompt")
    error = await refusal(prepare(served, completion(prompt="x", suffix="y")))
    assert (error.param, error.code) == ("suffix", "unsupported_parameter")


def events(chunks: list[bytes]) -> list[dict]:
    return [json.loads(c.removeprefix(b"data: ")) for c in chunks]


def test_a_streamed_chat_carries_what_the_whole_response_carries(served: ServedModel) -> None:
    piece = served.tokenizer.piece
    deltas = [
        Delta([1], "Hel", logprobs=[TokenLogprob(1, -0.5, [(2, -1.0)])]),
        Delta([2], "lo", "stop", 5, 2, 3, [TokenLogprob(2, -0.1)]),
    ]
    streamed = ChatRenderer(ID, 1, 5, piece, pipeline.NO_TOOLS, True, include_usage=True)
    chunks = streamed.opening() + [c for d in deltas for c in streamed.chunks(0, d)]
    *chunks, done = chunks + streamed.closing()
    assert done == b"data: [DONE]\n\n"
    whole = ChatRenderer(ID, 1, 5, piece, pipeline.NO_TOOLS, want_logprobs=True)
    for delta in deltas:
        whole.add(0, delta)
    body = json.loads(whole.whole())
    parsed = events(chunks)
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in parsed if e["choices"])
    assert text == body["choices"][0]["message"]["content"] == "Hello"
    streamed_logprobs = [
        item for e in parsed if e["choices"] and e["choices"][0]["logprobs"]
        for item in e["choices"][0]["logprobs"]["content"]
    ]  # fmt: skip
    assert streamed_logprobs == body["choices"][0]["logprobs"]["content"]
    assert [e["choices"][0]["finish_reason"] for e in parsed if e["choices"]][-1] == "stop"
    assert parsed[-1]["choices"] == [] and parsed[-1]["usage"] == body["usage"]
    assert body["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 3},
    }
    assert {e["id"] for e in parsed} == {streamed.id} and body["object"] == "chat.completion"


def test_completion_logprob_offsets_count_the_echo(served: ServedModel) -> None:
    piece = served.tokenizer.piece
    deltas = [Delta([9], piece(9).decode(), "length", 1, 1, 0, [TokenLogprob(9, -0.2)])]
    renderer = CompletionRenderer(ID, 1, 1, piece, "Echo", want_logprobs=True)
    chunks = renderer.opening() + renderer.chunks(0, deltas[0])
    parsed = events(chunks)
    assert parsed[0]["choices"][0]["text"] == "Echo"
    assert parsed[1]["choices"][0]["logprobs"]["text_offset"] == [4]
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"


class ThreadSpy:
    """The real tokenizer, noting which thread each tokenize call runs in."""

    def __init__(self, model: Model) -> None:
        self.model, self.threads = model, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)

    def tokenize(self, *args: object, **kwargs: object) -> list[int]:
        self.threads.append(threading.current_thread())
        return self.model.tokenize(*args, **kwargs)  # type: ignore[arg-type]


async def test_prompts_are_rendered_and_tokenized_off_the_event_loop(served: ServedModel) -> None:
    spy = ThreadSpy(served.tokenizer)
    watched = ServedModel(ID, spy, served.template, served.ctx_size)  # type: ignore[arg-type]
    await pipeline.prepare_chat(watched, chat())
    await pipeline.prepare_completion(watched, completion(prompt="Hello"))
    await pipeline.tokenize(watched, TokenizeRequest(prompt="Hello"))
    assert len(spy.threads) == 3
    assert threading.current_thread() not in spy.threads
