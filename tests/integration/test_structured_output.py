"""response_format (json_object, json_schema) through the official client against the real
model: outputs validate against their schemas (jsonschema), constrained and free sequences
share a batch, and schema features the constraint engine lacks answer 400 naming them."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "height_m": {"type": "number", "minimum": 0.3, "maximum": 2.5},
        "member": {"type": "boolean"},
        "nickname": {"type": "null"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 1,
            "maxItems": 3,
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {
                    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 99999}, {"type": "null"}]
                },
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "height_m", "member", "nickname", "role", "tags", "address"],
    "additionalProperties": False,
}


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


@pytest.mark.parametrize(
    "prompt",
    ["Describe a person.", "Invent a user of a web shop.", "Who is the admin here?"],
)
def test_json_schema_output_validates(server: RunningServer, prompt: str) -> None:
    reply = client(server).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": prompt}],
        response_format=json_schema_format(PERSON),
        max_tokens=300,
        temperature=0.7,
        seed=11,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), PERSON)


def test_json_schema_streamed_equals_non_streamed(server: RunningServer) -> None:
    kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "A person, please."}],
        response_format=json_schema_format(PERSON),
        max_tokens=300,
        temperature=0,
    )
    whole = client(server).chat.completions.create(**kwargs).choices[0].message.content
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in client(server).chat.completions.create(stream=True, **kwargs)
        if chunk.choices
    ]
    assert "".join(pieces) == whole
    jsonschema.validate(json.loads(whole), PERSON)


def test_json_object_output_is_an_object(server: RunningServer) -> None:
    reply = client(server).chat.completions.create(
        model=MODEL_ID,
        # Anchored on a small object: an open-ended prompt loops (greedy, on some CPUs)
        # until max_tokens, which says nothing about the constraint.
        messages=[
            {"role": "user", "content": 'Give one fruit as a JSON object like {"fruit": "..."}.'}
        ],
        response_format={"type": "json_object"},
        max_tokens=200,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


async def test_constrained_and_free_sequences_share_a_batch(server: RunningServer) -> None:
    """Two constrained and two free streams at once: the mask is per sequence, so the
    free ones generate exactly what they generate alone, and the others validate."""
    c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    free_kwargs = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        max_tokens=40,
        temperature=0,
    )
    alone = (await c.chat.completions.create(**free_kwargs)).choices[0].message.content
    results: dict[str, list] = {"free": [], "json": []}

    async def free() -> None:
        reply = await c.chat.completions.create(**free_kwargs)
        results["free"].append(reply.choices[0].message.content)

    async def constrained(seed: int) -> None:
        reply = await c.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Describe someone."}],
            response_format=json_schema_format(PERSON),
            max_tokens=300,
            temperature=0.8,
            seed=seed,
        )
        results["json"].append(reply.choices[0].message.content)

    def steps_over_two() -> float:
        count = server.metric("inferflux:batch_size_count")
        return count - server.metric("inferflux:batch_size_bucket", le="2.0")

    before = steps_over_two()
    async with trio.open_nursery() as nursery:
        for seed in (1, 2):
            nursery.start_soon(constrained, seed)
        for _ in range(2):
            nursery.start_soon(free)
    assert steps_over_two() > before  # they did share steps
    assert results["free"] == [alone, alone]
    for text in results["json"]:
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize(
    "schema, feature",
    [
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {}}, "if"),
        ({"type": "wizard"}, "wizard"),
        ({"type": "string", "pattern": "[a-"}, "regex"),
    ],
)
def test_unsupported_schema_features_are_400_naming_them(
    server: RunningServer, schema: dict, feature: str
) -> None:
    before = server.metric("inferflux:prompt_tokens_total")
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "x"}],
            response_format=json_schema_format(schema),
        )
    error = caught.value.body
    assert error["param"] == "response_format.json_schema.schema"
    assert feature in error["message"]
    # refused before anything reached the scheduler
    assert server.metric("inferflux:prompt_tokens_total") == before


@pytest.mark.parametrize(
    "response_format, param",
    [
        ({"type": "yaml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}, None),
    ],
)
def test_malformed_response_format_is_400(
    server: RunningServer, response_format: dict, param: str | None
) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "x"}],
        "response_format": response_format,
    }
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    if param:
        assert reply.json()["error"]["param"] == param


def test_response_format_is_checked_alongside_tools(server: RunningServer) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    base = {"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "tools": tools}
    url = f"{server.url}/v1/chat/completions"
    combined = {**base, "tool_choice": "required", "response_format": {"type": "json_object"}}
    reply = httpx.post(url, json=combined, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format"
    odd = {**base, "tool_choice": "required", "response_format": {"type": "yaml"}}
    reply = httpx.post(url, json=odd, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "response_format.type"


def test_logprobs_are_the_models_before_the_grammar_mask(server: RunningServer) -> None:
    reply = client(server).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Say hello."}],
        response_format={"type": "json_object"},
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    first = reply.choices[0].logprobs.content[0]
    assert first.token.lstrip().startswith("{")  # the grammar allows nothing else
    # ...but the model itself preferred other tokens, and says so
    assert any(not t.token.lstrip().startswith("{") for t in first.top_logprobs)
    assert first.logprob <= first.top_logprobs[0].logprob
