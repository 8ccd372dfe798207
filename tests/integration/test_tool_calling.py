"""Tool calling through the official client against the real 135M model: every
tool_choice, streamed and not, a tool-result round trip, and bad tool input -> 400."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer

pytestmark = pytest.mark.model

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 30}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a timezone", "parameters": TIME},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# One earlier call in the history: enough for a 135M model to use a tool under
# tool_choice auto (it does not on a bare question).
FEW_SHOT = [
    {"role": "user", "content": "What is the weather in Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "arguments": '{"city": "Rome", "unit": "celsius"}',
                },
            }
        ],
    },
    {"role": "user", "content": "What is the weather in Berlin?"},
]


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def check_calls(calls: list, names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({call.id for call in calls}) == len(calls)


def streamed(server: RunningServer, **kwargs) -> tuple[str, dict[int, dict], str, list]:
    """(content, calls by index, finish_reason, every tool-call delta) of a streamed reply."""
    content, calls, finish, deltas = "", {}, "", []
    for chunk in client(server).chat.completions.create(stream=True, **kwargs):
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            deltas.append(delta)
            call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                assert call["id"] is None, "id sent twice"
                call["id"], call["name"] = delta.id, delta.function.name
            else:
                assert call["id"], "arguments before id and name"
            call["arguments"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, calls, finish, deltas


@pytest.mark.parametrize(
    "tool_choice, names",
    [
        ("required", {"get_weather", "get_time"}),
        ({"type": "function", "function": {"name": "get_time"}}, {"get_time"}),
    ],
)
def test_constrained_tool_choice_returns_valid_calls(
    server: RunningServer, tool_choice, names: set[str]
) -> None:
    kwargs = dict(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice=tool_choice)
    reply = client(server).chat.completions.create(max_tokens=200, temperature=0, **kwargs)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    check_calls(choice.message.tool_calls, names)
    if isinstance(tool_choice, dict):
        assert len(choice.message.tool_calls) == 1

    content, calls, finish, deltas = streamed(server, max_tokens=200, temperature=0, **kwargs)
    assert content == "" and finish == "tool_calls"
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [
        (c.function.name, c.function.arguments) for c in choice.message.tool_calls
    ]
    # the first call's arguments arrive in fragments as they are generated
    assert sum(1 for d in deltas if d.index == 0 and not d.id) > 2


def test_sampled_required_calls_still_validate(server: RunningServer) -> None:
    for seed in range(4):
        reply = client(server).chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=120,
            temperature=1.0,
            seed=seed,
        )
        assert reply.choices[0].finish_reason == "tool_calls"
        check_calls(reply.choices[0].message.tool_calls, {"get_weather", "get_time"})
        assert len(reply.choices[0].message.tool_calls) == 1


def test_auto_detects_a_call_and_keeps_markup_out_of_content(server: RunningServer) -> None:
    kwargs = dict(model=MODEL_ID, messages=FEW_SHOT, tools=TOOLS, max_tokens=80, temperature=0)
    reply = client(server).chat.completions.create(**kwargs)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message.content
    check_calls(choice.message.tool_calls, {"get_weather", "get_time"})
    assert "Berlin" in choice.message.tool_calls[0].function.arguments
    content, calls, finish, _ = streamed(server, **kwargs)
    assert "<tool" not in content and "{" not in content
    assert finish == "tool_calls"
    assert [c["arguments"] for c in calls.values()] == [
        c.function.arguments for c in choice.message.tool_calls
    ]


def test_auto_and_none_answer_in_text_when_there_is_no_call(server: RunningServer) -> None:
    for tool_choice in ("auto", "none"):
        reply = client(server).chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Say hello."}],
            tools=TOOLS,
            tool_choice=tool_choice,
            max_tokens=20,
            temperature=0,
        )
        choice = reply.choices[0]
        assert choice.message.tool_calls is None
        assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_tool_result_round_trip(server: RunningServer) -> None:
    """The call goes back as an assistant message, the result as a `tool` message; both
    reach the prompt in the generic format, and the model answers in text."""
    c = client(server)
    first = c.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200
    )
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 23.5}'},
    ]
    reply = c.chat.completions.create(
        model=MODEL_ID, messages=history, tools=TOOLS, max_tokens=30, temperature=0
    )
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens > first.usage.prompt_tokens
    rendered = httpx.post(f"{server.url}/tokenize", json={"messages": history}, timeout=30).json()[
        "tokens"
    ]
    prompt = httpx.post(f"{server.url}/detokenize", json={"tokens": rendered}).json()["prompt"]
    assert '{"temperature": 23.5}' in prompt and "<tool_response>" in prompt
    assert f'"name": "{call.function.name}"' in prompt


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]}, None),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {"type": "wizard"}},
                            },
                        },
                    }
                ],
                "tool_choice": "required",
            },
            "tools",
        ),
    ],
)
def test_bad_tool_input_is_400(server: RunningServer, extra: dict, param: str | None) -> None:
    body = {"model": MODEL_ID, "messages": ASK, "tools": TOOLS, **extra}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["message"]
    if param:
        assert error["param"] == param
    no_tools = {"model": MODEL_ID, "messages": ASK, "tool_choice": "required"}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=no_tools, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tool_choice"


def test_required_call_with_refs_and_two_choices(server: RunningServer) -> None:
    """Parameters with $defs/$ref (what pydantic produces) constrain as written, and each
    of n=2 choices returns a valid call."""
    location = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    parameters = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/Location"}},
        "required": ["where"],
        "additionalProperties": False,
        "$defs": {"Location": location},
    }
    tools = [{"type": "function", "function": {"name": "locate", "parameters": parameters}}]
    reply = client(server).chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        n=2,
        max_tokens=80,
        temperature=1.0,
        seed=3,
    )
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls
        assert call.function.name == "locate"
        jsonschema.validate(json.loads(call.function.arguments), parameters)


@pytest.mark.parametrize(
    "body_extra, param",
    [
        ({"tool_choice": "[" * 3000 + "]" * 3000}, "tool_choice"),  # a string: fine, but 400
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {"name": "f", "parameters": {"type": "string"}},
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_odd_tool_fields_are_400(server: RunningServer, body_extra: dict, param: str) -> None:
    body = {"model": MODEL_ID, "messages": ASK, "tools": TOOLS, **body_extra}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_hostile_nesting_and_history_shapes_never_500(server: RunningServer) -> None:
    url = f"{server.url}/v1/chat/completions"
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "tool_choice": %s}'
    reply = httpx.post(
        url,
        content=body % (MODEL_ID.encode(), deep),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text
    bad_call = {"role": "assistant", "content": None, "tool_calls": [{"function": "x"}]}
    reply = httpx.post(url, json={"model": MODEL_ID, "messages": ASK + [bad_call]}, timeout=30)
    assert reply.status_code == 400
    assert "tool_calls[0].function" in reply.json()["error"]["message"]
    # arguments that are not JSON (or absurdly nested) are shown to the model as sent
    odd_args = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "function": {"name": "get_time", "arguments": "[" * 3000}}],
    }
    tokens = httpx.post(f"{server.url}/tokenize", json={"messages": ASK + [odd_args]}, timeout=30)
    assert tokens.status_code == 200, tokens.text


def test_a_model_looping_on_its_call_still_answers_tool_calls(server: RunningServer) -> None:
    """With parallel calls allowed, the small model repeats its call until max_tokens: the
    repeat is dropped and the answer is the call, finish_reason tool_calls."""
    kwargs = dict(model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required", temperature=0)
    reply = client(server).chat.completions.create(max_tokens=50, **kwargs)
    assert reply.usage.completion_tokens == 50  # it did run out of tokens
    assert reply.choices[0].finish_reason == "tool_calls"
    check_calls(reply.choices[0].message.tool_calls, {"get_weather", "get_time"})
    content, calls, finish, _ = streamed(server, max_tokens=50, **kwargs)
    assert finish == "tool_calls" and content == ""
    assert [c["arguments"] for c in calls.values()] == [
        c.function.arguments for c in reply.choices[0].message.tool_calls
    ]
