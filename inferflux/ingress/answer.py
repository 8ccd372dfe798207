"""A choice's answer, for every API's renderer: its text, or the tool calls in it.

Streamed, `AnswerStream` turns each delta into chat deltas (content, or the pieces of a
call, split out by ToolStream as the text comes); whole, `whole_answer` parses the finished
text once. Either way `finish_reason` says "tool_calls" when the answer is calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..scheduler.messages import Delta
from .render import ChoiceText
from .response_types import ChatDelta
from .tool_calls import ToolCall, ToolStream, ends_repeating, parse_calls
from .tool_prompt import ToolPlan


@dataclass(frozen=True)
class Answer:
    content: str | None
    """The text beside the calls (None when there is none), or all of it."""
    calls: list[ToolCall]
    finish_reason: str | None


def finish_reason(choice: ChoiceText, calls: list[ToolCall]) -> str | None:
    """ "tool_calls" when the answer is calls: the model stopped after them, or it ran out
    of tokens repeating one it had already made (small models loop on the pattern; the
    repeat is dropped, so nothing the client gets is cut off)."""
    if calls and (
        choice.finish_reason == "stop"
        or (choice.finish_reason == "length" and ends_repeating(choice.whole_text, calls))
    ):
        return "tool_calls"
    return choice.finish_reason


def whole_answer(choice: ChoiceText, tools: ToolPlan) -> Answer:
    text = choice.whole_text
    if tools.active:
        content, calls = parse_calls(text, tools.functions, bool(tools.grammar))
        if calls:
            return Answer(content or None, calls, finish_reason(choice, calls))
    return Answer(text, [], choice.finish_reason)


class AnswerStream:
    def __init__(self, tools: ToolPlan) -> None:
        self.tools = ToolStream(tools.functions, bool(tools.grammar)) if tools.active else None

    def feed(self, delta: Delta) -> list[ChatDelta]:
        """The chat deltas this delta makes ready (its text must be absorbed by the
        choice already)."""
        if self.tools is None:
            return [ChatDelta(content=delta.text)] if delta.text else []
        parts = self.tools.feed(delta.text)
        if delta.finish_reason:
            parts += self.tools.finish()
        return parts

    @property
    def calls(self) -> list[ToolCall]:
        return self.tools.calls if self.tools is not None else []
