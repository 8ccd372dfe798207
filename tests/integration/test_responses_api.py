"""The OpenAI Responses API through the official `openai` SDK against the real default
model: plain and streamed responses (every event validated against the SDK's own types),
function tools and a function_call_output round trip, json_schema output, stored
responses, and errors."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model

EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK_WEATHER = "What is the weather in Paris?"


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def raw_events(server: RunningServer, body: dict) -> list[dict]:
    """The SSE events as sent, each validated strictly against the SDK's event types."""
    events = []
    with httpx.stream(
        "POST", f"{server.url}/v1/responses", json={**body, "stream": True}, timeout=60
    ) as reply:
        assert reply.status_code == 200
        name = None
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                EVENT.validate_python(event)
                events.append(event)
    return events


def test_a_response_says_what_chat_completions_says(server: RunningServer) -> None:
    reply = client(server).responses.create(
        model=MODEL_ID, input="Say hello in French.", max_output_tokens=12, temperature=0
    )
    chat = client(server).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=12,
        temperature=0,
    )
    Response.model_validate(reply.model_dump())
    assert reply.id.startswith("resp_") and reply.output[0].id.startswith("msg_")
    assert reply.output_text == chat.choices[0].message.content
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage.input_tokens == chat.usage.prompt_tokens
    assert reply.usage.output_tokens == 12
    assert reply.usage.total_tokens == reply.usage.input_tokens + 12


def test_the_stream_is_the_official_event_sequence(server: RunningServer) -> None:
    body = {
        "model": MODEL_ID,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Count to five."}]}],
        "instructions": "Answer briefly.",
        "max_output_tokens": 30,
        "temperature": 0,
    }
    events = raw_events(server, body)
    types = [e["type"] for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete" if events[-1]["response"]["status"] == "incomplete"
        else "response.completed",
    ]  # fmt: skip
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == text == events[-4]["text"]
    whole = httpx.post(f"{server.url}/v1/responses", json=body, timeout=60).json()
    assert whole["output"][0]["content"][0]["text"] == text
    for count in ("input_tokens", "output_tokens", "total_tokens"):  # cached ones differ
        assert whole["usage"][count] == final["usage"][count]
    assert final["instructions"] == "Answer briefly."


def test_function_call_and_its_output_round_trip(server: RunningServer) -> None:
    c = client(server)
    first = c.responses.create(
        model=MODEL_ID,
        input=ASK_WEATHER,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    )
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert first.status == "completed" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # Continued from the stored response...
    result = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp": 21}'}
    chained = c.responses.create(
        model=MODEL_ID,
        previous_response_id=first.id,
        input=[result],
        tools=[WEATHER],
        max_output_tokens=30,
        temperature=0,
    )
    assert chained.status in ("completed", "incomplete") and chained.output_text
    assert chained.previous_response_id == first.id
    # ...and from the whole history sent again (nothing stored) say the same.
    history = [
        {"role": "user", "content": ASK_WEATHER},
        {"type": "function_call", "call_id": call.call_id, "name": call.name,
         "arguments": call.arguments},
        result,
    ]  # fmt: skip
    resent = c.responses.create(
        model=MODEL_ID, input=history, tools=[WEATHER], max_output_tokens=30, temperature=0,
        store=False,
    )  # fmt: skip
    assert resent.output_text == chained.output_text
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(resent.id)


def test_streamed_function_call(server: RunningServer) -> None:
    body = {
        "model": MODEL_ID,
        "input": ASK_WEATHER,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "max_output_tokens": 60,
        "temperature": 0,
    }
    events = raw_events(server, body)
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["item"]["type"] for e in added] == ["function_call"]
    arguments = "".join(
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    )
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert done["arguments"] == arguments and done["name"] == "get_weather"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["arguments"] == arguments
    jsonschema.validate(json.loads(arguments), WEATHER["parameters"])


def test_json_schema_output_validates(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client(server).responses.create(
        model=MODEL_ID,
        input="Invent a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema}},
        max_output_tokens=60,
        temperature=0,
    )
    assert reply.status == "completed"
    jsonschema.validate(json.loads(reply.output_text), schema)
    assert reply.text.format.type == "json_schema"


def test_stored_responses_can_be_read_and_deleted(server: RunningServer) -> None:
    c = client(server)
    made = c.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=3, metadata={"k": "v"})
    again = c.responses.retrieve(made.id)
    assert again.model_dump() == made.model_dump() and again.metadata == {"k": "v"}
    c.responses.delete(made.id)
    for call in (lambda: c.responses.retrieve(made.id), lambda: c.responses.delete(made.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as missing:
        c.responses.create(model=MODEL_ID, input="Hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"
    before = server.metric("inferflux:api_requests_total", api="responses")
    c.responses.create(model=MODEL_ID, input="Hi", max_output_tokens=1, store=False)
    assert server.metric("inferflux:api_requests_total", api="responses") == before + 1


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"input": 5}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image",
                                                   "image_url": "data:,"}]}]},
         "input[0].content[0].image_url"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "tools[0].parameters"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"text": {"format": {"type": "json_schema", "name": "x",
                              "schema": {"type": "wizard"}}}}, "text.format.schema"),
        ({"max_output_tokens": 5000}, "max_output_tokens"),
        ({"background": True}, "background"),
        ({"model": "nope"}, "model"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_naming_the_parameter(
    server: RunningServer, extra: dict, param: str
) -> None:
    body = {"model": MODEL_ID, "input": "x", "max_output_tokens": 2, **extra}
    reply = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30)
    assert reply.status_code == (404 if param == "model" else 400), reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"]
