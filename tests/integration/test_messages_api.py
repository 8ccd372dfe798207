"""The Anthropic Messages API through the official `anthropic` SDK against the real
default model: messages and streams (every event validated against the SDK's own types),
tool use and tool results, stop sequences, structured output, count_tokens, and errors in
Anthropic's shape.

The SDK no longer takes sampling parameters as arguments; `temperature` goes in
`extra_body`, as any extension does."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model

EVENT = TypeAdapter(RawMessageStreamEvent)
GREEDY = {"extra_body": {"temperature": 0}}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
ONE_CALL = {"type": "any", "disable_parallel_tool_use": True}


def client(server: RunningServer, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


def raw_events(server: RunningServer, body: dict) -> list[dict]:
    """The SSE events as sent, each validated strictly against the SDK's event types."""
    events = []
    with httpx.stream(
        "POST", f"{server.url}/v1/messages", json={**body, "stream": True}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        name = None
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                if name != "ping":
                    EVENT.validate_python(event)
                events.append(event)
    return events


def test_a_message_says_what_chat_completions_says(server: RunningServer) -> None:
    message = client(server).messages.create(
        model=MODEL_ID,
        max_tokens=12,
        system="Answer briefly.",
        messages=[{"role": "user", "content": "Say hello in French."}],
        **GREEDY,
    )
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").chat.completions.create(
        model=MODEL_ID,
        max_tokens=12,
        temperature=0,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Say hello in French."},
        ],
    )
    Message.model_validate(message.model_dump())
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.content[0].text == chat.choices[0].message.content
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 12
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == chat.usage.prompt_tokens


def test_the_stream_is_the_official_event_sequence(server: RunningServer) -> None:
    sdk = {"model": MODEL_ID, "max_tokens": 20,
           "messages": [{"role": "user", "content": "Count to five."}]}  # fmt: skip
    body = {**sdk, "temperature": 0}
    events = raw_events(server, body)
    types = [e["type"] for e in events]
    assert types[:3] == ["message_start", "ping", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(types[3:-3]) == {"content_block_delta"}
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    whole = httpx.post(f"{server.url}/v1/messages", json=body, timeout=60).json()
    assert whole["content"] == [{"type": "text", "text": text}]
    assert events[-2]["delta"]["stop_reason"] == whole["stop_reason"]
    assert events[-2]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]
    # and the SDK's own stream helper puts the same message together
    with client(server).messages.stream(**sdk, **GREEDY) as stream:  # type: ignore[arg-type]
        assert stream.get_final_message().content[0].text == text


def test_tool_use_and_its_result_round_trip(server: RunningServer) -> None:
    c = client(server)
    first = c.messages.create(
        model=MODEL_ID, max_tokens=60, tools=[WEATHER], tool_choice=ONE_CALL, messages=ASK,
        **GREEDY,
    )  # fmt: skip
    (use,) = first.content
    assert first.stop_reason == "tool_use" and use.type == "tool_use"
    assert use.name == "get_weather" and use.id.startswith("toolu_")
    jsonschema.validate(use.input, WEATHER["input_schema"])
    history = ASK + [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "21 degrees"},
        ]},
    ]  # fmt: skip
    answer = c.messages.create(
        model=MODEL_ID, max_tokens=30, tools=[WEATHER], messages=history, **GREEDY
    )
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].text
    with c.messages.stream(
        model=MODEL_ID, max_tokens=60, tools=[WEATHER], tool_choice=ONE_CALL, messages=ASK,
        **GREEDY,
    ) as stream:  # fmt: skip
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b.input for b in streamed.content] == [use.input]


def test_streamed_tool_input_arrives_as_json_deltas(server: RunningServer) -> None:
    body = {"model": MODEL_ID, "max_tokens": 60, "temperature": 0, "messages": ASK,
            "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}  # fmt: skip
    events = raw_events(server, body)
    (start,) = [e for e in events if e["type"] == "content_block_start"]
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    partial = "".join(
        e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"
    )
    jsonschema.validate(json.loads(partial), WEATHER["input_schema"])
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_stop_sequences_say_which_one_stopped(server: RunningServer) -> None:
    hello = [{"role": "user", "content": "Say hello in French."}]
    plain = client(server).messages.create(model=MODEL_ID, max_tokens=20, messages=hello, **GREEDY)
    words = plain.content[0].text.split()
    stop = words[2]  # a word the model writes, after the first two
    stopped = client(server).messages.create(
        model=MODEL_ID, max_tokens=20, stop_sequences=["zzz-never", stop],
        messages=[{"role": "user", "content": "Say hello in French."}], **GREEDY,
    )  # fmt: skip
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stop not in stopped.content[0].text
    assert plain.content[0].text.startswith(stopped.content[0].text)


def test_output_config_json_schema(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    message = client(server).messages.create(
        model=MODEL_ID, max_tokens=60, messages=[{"role": "user", "content": "Invent a person."}],
        output_config={"format": {"type": "json_schema", "schema": schema}}, **GREEDY,
    )  # fmt: skip
    assert message.stop_reason == "end_turn"
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_count_tokens_is_the_prompt_the_model_sees(server: RunningServer) -> None:
    kwargs = {"model": MODEL_ID, "system": "Be brief.", "messages": ASK, "tools": [WEATHER]}
    counted = client(server).messages.count_tokens(**kwargs)  # type: ignore[arg-type]
    message = client(server).messages.create(max_tokens=1, **kwargs, **GREEDY)  # type: ignore[arg-type]
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + usage.cache_read_input_tokens > 50


@pytest.mark.parametrize(
    "body, status, kind",
    [
        ({"messages": ASK}, 400, "invalid_request_error"),  # max_tokens is required
        ({"max_tokens": 5, "messages": ASK, "model": "nope"}, 404, "not_found_error"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "AAAA"}}]}]}, 400, "invalid_request_error"),
        ({"max_tokens": 5, "messages": ASK, "tools": [{"type": "web_search_20250305",
                                                        "name": "web_search"}]},
         400, "invalid_request_error"),
        ({"max_tokens": 5, "messages": ASK, "tool_choice": {"type": "any"}}, 400,
         "invalid_request_error"),
        ({"max_tokens": 5, "messages": []}, 400, "invalid_request_error"),
    ],
)  # fmt: skip
def test_errors_come_in_anthropics_shape(
    server: RunningServer, body: dict, status: int, kind: str
) -> None:
    reply = httpx.post(f"{server.url}/v1/messages", json={"model": MODEL_ID, **body}, timeout=30)
    assert reply.status_code == status, reply.text
    error = reply.json()
    assert error["type"] == "error" and error["error"]["type"] == kind
    assert error["error"]["message"]
    assert set(error) == {"type", "error"} and set(error["error"]) == {"type", "message"}
    if "max_tokens" in body:  # the SDK itself insists on it
        with pytest.raises(anthropic.APIStatusError) as caught:  # and reads the error so
            client(server).messages.create(**{"model": MODEL_ID, **body})
        assert caught.value.status_code == status
