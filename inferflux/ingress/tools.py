"""Tool calling: tools into the prompt, calls out of the generated text.

Format. A model whose chat template knows tools gets them through the template (`tools=`),
as Hugging Face's apply_chat_template passes them. Any other model (the default SmolLM2
among them) gets the generic format, the one Hermes/Qwen models are trained on: a system
message lists the functions as JSON and asks for

    <tool_call>
    {"name": "<function>", "arguments": {<arguments>}}
    </tool_call>

and earlier results come back as user turns wrapped in <tool_response>. Either way the
output is read the same way: every <tool_call> block, or (for models that answer a bare
object) an output that is one JSON object naming a known function.

tool_choice: `none` leaves the tools out of the prompt; `auto` lets the model choose and
detects calls in what it wrote; `required` and a named function constrain decoding with a
grammar to one (or, with parallel_tool_calls, up to MAX_PARALLEL_CALLS) valid calls: the
name from the list and arguments valid against that function's JSON schema, so even a
135M model returns a call that parses.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..model.chat_template import ChatTemplate
from ..worker.llama import Model
from .errors import APIError
from .openai_types import parse_arguments
from .structured import JSON_STYLE, checked, compact

OPEN, CLOSE = "<tool_call>", "</tool_call>"
MAX_PARALLEL_CALLS = 4
_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.S)


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


@dataclass
class ToolPlan:
    """What a request's tools and tool_choice mean for this generation."""

    functions: list[Function]
    choice: str  # none | auto | required | function
    parallel: bool
    grammar: str = ""  # set for required / a named function

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.choice != "none"


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def read_tools(tools: list[dict[str, Any]] | None) -> list[Function]:
    functions = []
    for i, tool in enumerate(tools or []):
        if tool.get("type", "function") != "function":
            raise _bad(f"tools[{i}].type must be 'function'", f"tools[{i}].type")
        spec = tool.get("function")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _bad(f"tools[{i}].function.name is required", f"tools[{i}].function")
        name = spec["name"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise _bad(
                f"tools[{i}].function.name must be 1-64 of a-z, A-Z, 0-9, _ and -",
                f"tools[{i}].function.name",
            )
        parameters = spec.get("parameters") or {"type": "object", "properties": {}}
        # OpenAI's rule: arguments are an object, so the schema must describe one.
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise _bad(
                f"tools[{i}].function.parameters must be a JSON schema of type object",
                f"tools[{i}].function.parameters",
            )
        parameters = {**parameters, "type": "object"}
        functions.append(Function(name, str(spec.get("description") or ""), parameters))
    if len({f.name for f in functions}) != len(functions):
        raise _bad("tools: function names must be unique", "tools")
    return functions


async def plan_tools(
    model: Model,
    tools: list[dict[str, Any]] | None,
    tool_choice: Any,
    parallel_tool_calls: bool | None,
) -> ToolPlan:
    functions = read_tools(tools)
    choice = "auto" if functions else "none"
    chosen = functions
    if tool_choice is not None:
        if isinstance(tool_choice, str):
            if tool_choice not in ("none", "auto", "required"):
                raise _bad(
                    "tool_choice must be none, auto, required or a named function",
                    "tool_choice",
                )
            choice = tool_choice
        elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict):
            name = tool_choice["function"].get("name")
            chosen = [f for f in functions if f.name == name]
            if not chosen:
                raise _bad(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
            choice = "function"
        else:
            raise _bad(
                'tool_choice must be a string or {"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if choice != "none" and not functions:
            raise _bad(f"tool_choice {choice!r} needs tools", "tool_choice")
    # A named function is called once; `required` may call several when parallel.
    parallel = parallel_tool_calls is not False and choice != "function"
    plan = ToolPlan(functions, choice, parallel)
    if choice in ("required", "function"):
        plan.grammar = await checked(model, call_grammar(chosen, plan.parallel), "tools")
    return plan


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
) -> str:
    """The prompt text: through the model's template with `tools=` when it knows tools,
    else in the generic format (which also renders a history holding calls and results
    for a template that knows nothing of them)."""
    if knows_tools(template.source):
        extra = {"tools": [f.to_openai() for f in offered]} if offered else {}
        return template.render(messages, **extra)
    return template.render(generic_messages(messages, offered))


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


# output ----------------------------------------------------------------------------------
@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON text, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def body(self) -> str:
        """The call as a block's body, as the grammar has the model write it."""
        return compact({"name": self.name, "arguments": parse_arguments(self.arguments)})

    def same(self, other: ToolCall) -> bool:
        """The same function with equal arguments (as JSON values, not as text)."""
        return self.name == other.name and parse_arguments(self.arguments) == parse_arguments(
            other.arguments
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def _as_call(text: str, names: set[str]) -> ToolCall | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode; keep it if it is JSON
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], compact(arguments))


def parse_calls(
    text: str, functions: list[Function], constrained: bool = False
) -> tuple[str, list[ToolCall]]:
    """(content, calls) from a finished generation. A complete block that is no valid call
    (an unknown name, arguments that do not parse) makes the whole text content: nothing
    is dropped but repeats of an identical call (small models loop on the pattern) and,
    after complete calls, a block cut off by max_tokens. Under a grammar (`constrained`)
    a cut-off block that got as far as its name is a call with the arguments written so
    far, as a stream reports it (and as OpenAI does with finish_reason "length")."""
    names = {f.name for f in functions}
    start = text.find(OPEN)
    if start < 0:
        call = _as_call(text.strip(), names)
        return ("", [call]) if call else (text, [])
    calls: list[ToolCall] = []
    for body, close in _CALL_BLOCK.findall(text[start:]):
        call = _as_call(body, names)
        if call is None and constrained and not close and not calls:
            call = _cut_call(body, names)  # only a first call streams before it closes
        if call is None:
            if close or not calls:
                return text, []
            break
        if not any(c.same(call) for c in calls):
            calls.append(call)
    return text[:start].strip(), calls


def ends_repeating(text: str, calls: list[ToolCall]) -> bool:
    """Whether everything after the last complete call block is the start of a block
    repeating a call already made (or nothing at all)."""
    end = text.rfind(CLOSE)
    if end < 0:
        return False
    tail = text[end + len(CLOSE) :].strip()
    if OPEN.startswith(tail):  # nothing, or the marker cut short
        return True
    if not tail.startswith(OPEN):
        return False
    body = tail[len(OPEN) :].strip()
    return any(call.body().startswith(body) for call in calls)


_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"]*)"\s*,\s*"arguments"\s*:\s*')


def _cut_call(body: str, names: set[str]) -> ToolCall | None:
    head = _HEAD.match(body)
    if head is None or head.group(1) not in names:
        return None
    return ToolCall(head.group(1), body[head.end() :].rstrip())


class ToolStream:
    """Splits streamed text into content and tool-call deltas, OpenAI style: for each call
    first its index, id and name, then argument fragments. Text that could still become
    "<tool_call>" is held back, so call markup never leaks into content.

    Under a grammar (`incremental`) a call is known to be well formed as it is written, so
    its arguments stream as they come; otherwise (tool_choice auto) a call is checked
    whole when it closes, then sent (a block that is no valid call stays content)."""

    def __init__(self, functions: list[Function], incremental: bool) -> None:
        self.names = {f.name for f in functions}
        self.incremental = incremental
        self.pending = ""  # text not yet classified
        self.in_call = False
        self.body = ""  # the current call's text after <tool_call>
        self.call_id = ""  # the current call's id, once its name was sent
        self.args_sent = ""  # the current call's argument text already sent
        self.calls: list[ToolCall] = []
        self.held = ""  # whitespace not yet known to be content
        self.content_sent = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        """Delta payloads ({"content": ...} or {"tool_calls": [...]}) for new text."""
        self.pending += text
        out: list[dict[str, Any]] = []
        while True:
            if not self.in_call and not self.calls and self._maybe_bare_object():
                return out  # held whole: finish() tells a bare call from content
            marker = CLOSE if self.in_call else OPEN
            at = self.pending.find(marker)
            if at < 0:
                keep = len(self.pending) - _partial_suffix(self.pending, marker)
                ready, self.pending = self.pending[:keep], self.pending[keep:]
                if self.in_call:
                    self.body += ready
                    self._stream_arguments(out)
                else:
                    self._content(ready, out)
                return out
            ready, self.pending = self.pending[:at], self.pending[at + len(marker) :]
            if self.in_call:
                self.body += ready
                if self._close_call(out, closed=True):
                    self.pending = self.pending.lstrip()
            else:
                self._content(ready, out)
                self.in_call, self.body, self.call_id, self.args_sent = True, "", "", ""

    def finish(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.in_call:  # generation ended inside a block (max_tokens, or no closing tag)
            self.body += self.pending
            self._close_call(out, closed=False)
        elif self._maybe_bare_object() and not self.calls:
            call = _as_call(self.pending.strip(), self.names)
            if call is not None:
                out.append(_call_delta(0, call.name, "", call.id))
                out.append(_call_delta(0, None, call.arguments))
                self.calls.append(call)
                self.pending = ""
        self._content(self.pending, out)
        self.pending = ""
        if self.held and not self.calls:
            out.append({"content": self.held})
        self.held = ""
        return out

    def _maybe_bare_object(self) -> bool:
        """Nothing but whitespace was seen before a "{": this may be a call written as a
        bare JSON object, which only the whole text can tell."""
        return not self.content_sent and (self.held + self.pending).lstrip().startswith("{")

    def _content(self, text: str, out: list[dict[str, Any]]) -> None:
        if self.calls:  # after a call, OpenAI models stop: the rest is dropped
            return
        text = self.held + text
        if not text.strip():  # whitespace is held until it is known to be content
            self.held = text
            return
        self.held = ""
        out.append({"content": text})
        self.content_sent = True

    def _stream_arguments(self, out: list[dict[str, Any]]) -> None:
        # Only the first call streams as written: a later one may repeat an earlier one
        # (small models loop on the pattern), which shows only once it is complete.
        if not self.incremental or self.calls:
            return
        head = _HEAD.match(self.body)
        if head is None or head.group(1) not in self.names:
            return
        index = len(self.calls)
        if not self.call_id:
            self.call_id = new_call_id()
            out.append(_call_delta(index, head.group(1), "", self.call_id))
        # Everything after "arguments": but the outer object's closing brace, which is
        # held back (with trailing whitespace) until the block closes.
        args = self.body[head.end() :].rstrip()
        visible = args[:-1] if args.endswith("}") else args
        if len(visible) > len(self.args_sent):
            out.append(_call_delta(index, None, visible[len(self.args_sent) :]))
            self.args_sent = visible

    def _close_call(self, out: list[dict[str, Any]], closed: bool) -> bool:
        """End the current block; True when it was a call."""
        self.in_call = False
        self._stream_arguments(out)
        index = len(self.calls)
        call = _as_call(self.body.strip(), self.names)
        if self.call_id:  # streamed already; the grammar made it valid (or it was cut)
            args = self.body[_HEAD.match(self.body).end() :].rstrip()  # type: ignore[union-attr]
            if call is not None:  # complete: the last brace closes the outer object
                args = args[:-1]
            rest = args[len(self.args_sent) :]
            if rest:
                out.append(_call_delta(index, None, rest))
            name = _HEAD.match(self.body).group(1)  # type: ignore[union-attr]
            self.calls.append(ToolCall(name, self.args_sent + rest, self.call_id))
            return True
        if call is None:  # not a call after all: it is content
            self._content(OPEN + self.body + (CLOSE if closed else ""), out)
            return False
        if not any(c.same(call) for c in self.calls):
            out.append(_call_delta(index, call.name, "", call.id))
            out.append(_call_delta(index, None, call.arguments))
            self.calls.append(call)
        return True


def _call_delta(index: int, name: str | None, arguments: str, call_id: str = "") -> dict[str, Any]:
    if name is None:
        return {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
    return {
        "tool_calls": [
            {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
    }


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
