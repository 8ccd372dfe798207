"""Tool-call parsing: the streamed deltas (split at any boundary) carry exactly what the
whole-text parse finds, and call markup never shows up in content."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from inferflux.ingress.tools import Function, ToolStream, call_grammar, parse_calls

FUNCTIONS = [
    Function("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}}),
    Function("get_time", "", {"type": "object"}),
]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris {x}"}}\n</tool_call>\n'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>\n'

TEXTS = [
    CALL,
    CALL + CALL2,
    CALL + CALL,  # a repeat is reported once
    "Let me check. " + CALL,
    '{"name": "get_time", "arguments": {"tz": "UTC"}}',  # a bare object naming a tool
    "No tools needed: 3 < 4 and {braces} are fine.",
    '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call>',  # stays content
    CALL + '<tool_call>\n{"name": "get_ti',  # cut off by max_tokens after a complete call
    "<tool",  # a prefix of the marker that never completes
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa',  # cut mid-arguments
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}',  # before the "}"
    '<tool_call>\n{"name": "get_wea',  # cut inside the name
]


def replay(text: str, cuts: list[int], incremental: bool) -> tuple[str, list[tuple[str, str]]]:
    stream = ToolStream(FUNCTIONS, incremental)
    parts = []
    bounds = sorted({c % (len(text) + 1) for c in cuts}) + [len(text)]
    start = 0
    for end in bounds:
        parts += stream.feed(text[start:end])
        start = end
    parts += stream.finish()
    content = "".join(p.get("content", "") for p in parts)
    calls: dict[int, list[str]] = {}
    for part in parts:
        for delta in part.get("tool_calls", []):
            call = calls.setdefault(delta["index"], ["", ""])
            if "id" in delta:
                assert call == ["", ""], "id and name come first, once"
                call[0] = delta["function"]["name"]
            call[1] += delta["function"]["arguments"]
    return content, [(name, args) for name, args in calls.values()]


@given(
    st.sampled_from(TEXTS),
    st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    st.booleans(),
)
def test_streamed_calls_equal_the_whole_text_parse(text, cuts, incremental) -> None:
    """`incremental` is the constrained mode (a grammar is active)."""
    content, calls = replay(text, cuts, incremental)
    whole_content, whole_calls = parse_calls(text, FUNCTIONS, constrained=incremental)
    assert [name for name, _ in calls] == [c.name for c in whole_calls]
    for (_, streamed_args), call in zip(calls, whole_calls, strict=True):
        # streamed arguments are the model's own text; the whole parse may re-encode them
        assert streamed_args == call.arguments or json.loads(streamed_args) == json.loads(
            call.arguments
        )
    if whole_calls:
        assert "<tool_call>" not in content and "get_weather" not in content
        assert content.strip() == whole_content
    else:
        assert content == text


def test_parse_calls_shapes() -> None:
    content, calls = parse_calls(CALL + CALL2, FUNCTIONS)
    assert content == "" and [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Paris {x}"}
    assert len(parse_calls(CALL + CALL, FUNCTIONS)[1]) == 1
    text = "<tool_call>\n{not json}\n</tool_call>"
    assert parse_calls(text, FUNCTIONS) == (text, [])
    assert parse_calls("just text", FUNCTIONS) == ("just text", [])


def test_call_grammar_names_every_function_and_bounds_parallel_calls() -> None:
    grammar = call_grammar(FUNCTIONS, parallel=True)
    assert '\\"get_weather\\"' in grammar and '\\"get_time\\"' in grammar
    assert "call{1,4}" in grammar
    assert "call{" not in call_grammar(FUNCTIONS[:1], parallel=False)
