"""Tool-call parsing: the streamed deltas (split at any boundary) carry exactly what the
whole-text parse finds, and call markup never shows up in content."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from inferflux.ingress.request_types import ChatMessage
from inferflux.ingress.tool_calls import ToolStream, ends_repeating, parse_calls
from inferflux.ingress.tool_prompt import Function, call_grammar, render_chat
from inferflux.model.chat_template import CHATML, ChatTemplate


def rendered(*args) -> str:  # noqa: ANN002
    """The prompt text (render_chat gives it in template and content pieces)."""
    return "".join(text for text, _ in render_chat(*args))


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
    CALL + '<tool_call>\n{"name": "get_time", "arguments": {"tz": "U',  # a second call cut
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
    parts = [msgspec.to_builtins(part) for part in parts]  # ChatDelta: unset fields left out
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


# A chat template that knows tools, in the style of Qwen2.5/Hermes templates.
TOOLS_TEMPLATE = """
{%- if tools %}<|im_start|>system
# Tools
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>{{ message.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}<|im_start|>assistant
"""
HISTORY = b"""[
  {"role": "user", "content": "Weather in Paris?"},
  {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
   "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]},
  {"role": "tool", "tool_call_id": "c1", "content": "{\\"temp\\": 21}"}
]"""


def history() -> list[dict]:
    messages = msgspec.json.decode(HISTORY, type=list[ChatMessage])
    return [m.as_template_dict() for m in messages]


def test_a_template_that_knows_tools_gets_them_and_the_calls_as_objects() -> None:
    text = rendered(ChatTemplate(TOOLS_TEMPLATE), history(), FUNCTIONS)
    assert '"name": "get_weather"' in text and "# Tools" in text
    # the history's arguments reach the template parsed, as HF templates expect
    assert '"arguments": {"city": "Paris"}' in text
    assert '<tool_response>{"temp": 21}</tool_response>' in text
    assert "You can call functions" not in text  # not the generic format
    assert "# Tools" not in rendered(ChatTemplate(TOOLS_TEMPLATE), history(), [])


def test_a_template_without_tools_gets_the_generic_format() -> None:
    text = rendered(ChatTemplate(CHATML), history(), FUNCTIONS)
    assert text.startswith("<|im_start|>system\nYou can call functions")
    assert "<tools>" in text and '"name": "get_weather"' in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>' in text
    # tool_choice none: no tools offered, the history still renders
    plain = rendered(ChatTemplate(CHATML), history(), [])
    assert "<tools>" not in plain and "<tool_response>" in plain


def test_running_out_of_tokens_while_repeating_a_call_is_still_a_tool_call_answer() -> None:
    _, calls = parse_calls(CALL + CALL[:40], FUNCTIONS, constrained=True)
    assert [c.name for c in calls] == ["get_weather"]
    assert ends_repeating(CALL + CALL[:40], calls)  # the cut block repeats the first call
    assert ends_repeating(CALL + "<tool", calls)
    assert ends_repeating(CALL, calls)
    other = CALL + '<tool_call>\n{"name": "get_time", "arguments": {"tz": "U'
    assert not ends_repeating(other, parse_calls(other, FUNCTIONS, constrained=True)[1])
    cut_first = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa'
    assert not ends_repeating(cut_first, parse_calls(cut_first, FUNCTIONS, constrained=True)[1])
