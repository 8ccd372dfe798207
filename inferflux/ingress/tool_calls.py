"""Tool calling, the output side: calls read from the generated text, whole or streamed.

Every <tool_call> block is a call, or (for models that answer a bare object) an output that
is one JSON object naming a known function (tool_prompt.py describes the format).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from .request_types import parse_arguments
from .response_types import ChatDelta, FunctionDelta, FunctionOut, ToolCallDelta, ToolCallOut
from .structured import compact
from .tool_prompt import CLOSE, OPEN, Function

_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(</tool_call>|$)", re.S)


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


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

    def to_openai(self) -> ToolCallOut:
        return ToolCallOut(id=self.id, function=FunctionOut(self.name, self.arguments))


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

    def feed(self, text: str) -> list[ChatDelta]:
        """The chat deltas (content, or pieces of calls) that new text makes ready."""
        self.pending += text
        out: list[ChatDelta] = []
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

    def finish(self) -> list[ChatDelta]:
        out: list[ChatDelta] = []
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
            out.append(ChatDelta(content=self.held))
        self.held = ""
        return out

    def _maybe_bare_object(self) -> bool:
        """Nothing but whitespace was seen before a "{": this may be a call written as a
        bare JSON object, which only the whole text can tell."""
        return not self.content_sent and (self.held + self.pending).lstrip().startswith("{")

    def _content(self, text: str, out: list[ChatDelta]) -> None:
        if self.calls:  # after a call, OpenAI models stop: the rest is dropped
            return
        text = self.held + text
        if not text.strip():  # whitespace is held until it is known to be content
            self.held = text
            return
        self.held = ""
        out.append(ChatDelta(content=text))
        self.content_sent = True

    def _stream_arguments(self, out: list[ChatDelta]) -> None:
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

    def _close_call(self, out: list[ChatDelta], closed: bool) -> bool:
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


def _call_delta(index: int, name: str | None, arguments: str, call_id: str = "") -> ChatDelta:
    if name is None:
        call = ToolCallDelta(index, function=FunctionDelta(arguments=arguments))
    else:
        call = ToolCallDelta(index, call_id, "function", FunctionDelta(name, arguments))
    return ChatDelta(tool_calls=[call])


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
