"""Tool calling, the input side: what a request's tools and tool_choice mean for the prompt
and for decoding.

Format. A model whose chat template knows tools gets them through the template (`tools=`),
as Hugging Face's apply_chat_template passes them. Any other model (the default SmolLM2
among them) gets the generic format, the one Hermes/Qwen models are trained on: a system
message lists the functions as JSON and asks for

    <tool_call>
    {"name": "<function>", "arguments": {<arguments>}}
    </tool_call>

and earlier results come back as user turns wrapped in <tool_response>. Either way the
output is read the same way (tool_calls.py).

tool_choice: `none` leaves the tools out of the prompt; `auto` lets the model choose and
detects calls in what it wrote; `required` and a named function constrain decoding with a
grammar to one (or, with parallel_tool_calls, up to MAX_PARALLEL_CALLS) valid calls: the
name from the list and arguments valid against that function's JSON schema, so even a
135M model returns a call that parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..model.chat_template import ChatTemplate
from ..worker.llama import Model
from .errors import APIError
from .request_types import Tool, ToolChoice
from .structured import JSON_STYLE, check_schema_size, checked, compact

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4


@dataclass(frozen=True)
class Function:
    name: str
    description: str
    parameters: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools and tool_choice mean for this generation."""

    functions: list[Function]
    choice: str  # none | auto | required | function
    parallel: bool
    grammar: str = ""  # set for required / a named function

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.choice != "none"

    @property
    def offered(self) -> list[Function]:
        """The functions the prompt lists."""
        return self.functions if self.active else []


NO_TOOLS = ToolPlan([], "none", False)


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def read_tools(tools: list[Tool] | None) -> list[Function]:
    functions = []
    for i, tool in enumerate(tools or []):
        spec = tool.function
        parameters = spec.parameters or {"type": "object", "properties": {}}
        # OpenAI's rule: arguments are an object, so the schema must describe one.
        if parameters.get("type", "object") != "object":
            raise _bad(
                f"tools[{i}].function.parameters must be a JSON schema of type object",
                f"tools[{i}].function.parameters",
            )
        check_schema_size(parameters, f"tools[{i}].function.parameters")
        parameters = {**parameters, "type": "object"}
        functions.append(Function(spec.name, spec.description or "", parameters))
    if len({f.name for f in functions}) != len(functions):
        raise _bad("tools: function names must be unique", "tools")
    return functions


async def plan_tools(
    model: Model,
    tools: list[Tool] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
) -> ToolPlan:
    functions = read_tools(tools)
    choice = "auto" if functions else "none"
    chosen = functions
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            choice = tool_choice
        else:
            name = tool_choice.function.name
            chosen = [f for f in functions if f.name == name]
            if not chosen:
                raise _bad(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
            choice = "function"
        if choice != "none" and not functions:
            raise _bad(f"tool_choice {choice!r} needs tools", "tool_choice")
    # A named function is called once; `required` may call several when parallel.
    parallel = parallel_tool_calls is not False and choice != "function"
    grammar = ""
    if choice in ("required", "function"):
        grammar = await checked(model, call_grammar(chosen, parallel), "tools")
    return ToolPlan(functions, choice, parallel, grammar)


def call_grammar(functions: list[Function], parallel: bool) -> str:
    """Lark grammar for <tool_call> blocks, each a known name + valid arguments: one, or
    with `parallel` up to MAX_PARALLEL_CALLS."""
    # One rule per function, so each parameters schema stays the root of its own JSON
    # grammar (its "#/$defs/..." references resolve as the client wrote them).
    count = f"{{1,{MAX_PARALLEL_CALLS}}}" if parallel else ""
    lines = [
        f"start: call{count}",
        f"call: {json.dumps(OPEN + chr(10))} body {json.dumps(chr(10) + CLOSE + chr(10))}",
        "body: " + " | ".join(f"fn{i}" for i in range(len(functions))),
    ]
    for i, f in enumerate(functions):
        head = json.dumps(f'{{"name": {json.dumps(f.name)}, "arguments": ')
        lines.append(f'fn{i}: {head} args{i} "}}"')
        lines.append(f"args{i}: %json {json.dumps({**f.parameters, 'x-guidance': JSON_STYLE})}")
    return "\n".join(lines) + "\n"


# prompt ----------------------------------------------------------------------------------
def knows_tools(template_source: str) -> bool:
    return "tools" in template_source


def render_chat(
    template: ChatTemplate, messages: list[dict[str, Any]], offered: list[Function]
) -> list[tuple[str, bool]]:
    """The prompt as ChatTemplate.render_parts pieces: through the model's template with
    `tools=` when it knows tools, else in the generic format (which also renders a history
    holding calls and results for a template that knows nothing of them)."""
    if knows_tools(template.source):
        extra = {"tools": [f.to_openai() for f in offered]} if offered else {}
        return template.render_parts(messages, **extra)
    return template.render_parts(generic_messages(messages, offered))


def system_prompt(functions: list[Function]) -> str:
    listing = "\n".join(compact(f.to_openai()) for f in functions)
    return (
        "You can call functions. These are available:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call a function, answer with one block per call, exactly like this:\n"
        f'{OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n{CLOSE}'
    )


def render_call(call: dict[str, Any]) -> str:
    """A history call (arguments already parsed, or the client's text) as a block."""
    function = call["function"]
    body = compact({"name": function["name"], "arguments": function["arguments"]})
    return f"{OPEN}\n{body}\n{CLOSE}"


def generic_messages(
    messages: list[dict[str, Any]], functions: list[Function]
) -> list[dict[str, Any]]:
    """The conversation in the generic format: tools in the system message, assistant calls
    as <tool_call> blocks, tool results as a user turn of <tool_response> blocks."""
    out: list[dict[str, Any]] = []
    if functions:
        tools_text = system_prompt(functions)
        if messages and messages[0]["role"] in ("system", "developer"):
            first = messages[0]
            out.append({"role": "system", "content": f"{first['content']}\n\n{tools_text}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": tools_text})
    for message in messages:
        if message["role"] == "assistant" and message.get("tool_calls"):
            blocks = [render_call(c) for c in message["tool_calls"]]
            content = "\n".join(filter(None, [message.get("content") or "", *blocks]))
            out.append({"role": "assistant", "content": content})
        elif message["role"] == "tool":
            response = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "tool_results": True})
        else:
            out.append(message)
    for message in out:
        message.pop("tool_results", None)
    return out
