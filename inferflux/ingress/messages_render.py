"""Anthropic Messages rendering: one `message` object, or its stream of events.

A stream is message_start, ping, then per content block content_block_start,
content_block_delta... (text_delta for text, input_json_delta for a tool_use block's
input), content_block_stop; then message_delta (stop_reason, usage) and message_stop.
An error after the stream started is an `error` event.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import msgspec

from ..scheduler.messages import Delta
from .answer import AnswerStream, finish_reason, whole_answer
from .errors import APIError, anthropic_error
from .messages_types import (
    BlockDelta,
    BlockStart,
    BlockStop,
    ContentBlock,
    Event,
    InputJSONDelta,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    MessageUsage,
    Ping,
    StopDelta,
    StopReason,
    TextBlock,
    TextDelta,
    ToolUseBlock,
)
from .render import ChoiceText
from .tool_calls import ToolCall
from .tool_prompt import ToolPlan

_encode = msgspec.json.Encoder().encode
_STOP_REASONS: dict[str | None, StopReason] = {
    "tool_calls": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(arguments: str) -> dict[str, object]:
    """A call's arguments as the object Anthropic's `input` is ({} when they were cut off
    before they closed)."""
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class MessagesRenderer:
    def __init__(
        self,
        model_id: str,
        prompt_tokens: int,
        piece: Callable[[int], bytes],
        tools: ToolPlan,
        stop_sequences: list[str],
    ) -> None:
        self.model_id, self.prompt_tokens, self.piece = model_id, prompt_tokens, piece
        self.tools, self.stop_sequences = tools, stop_sequences
        self.id = "msg_" + secrets.token_hex(12)
        self.choice = ChoiceText(0)
        self.tokens: list[int] = []  # to tell which stop sequence ended the answer
        # streamed only
        self.stream = AnswerStream(tools)
        self.blocks = 0  # content blocks started
        self.open: str | None = None  # "text" or "tool_use": the block being written

    # streamed -------------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        usage = MessageUsage(self.prompt_tokens, 0)
        start = MessageStart(self._message([], None, None, usage))
        return [self._send(start), self._send(Ping())]

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        self._absorb(delta)
        out: list[bytes] = []
        for part in self.stream.feed(delta):
            if isinstance(part.content, str) and part.content:
                if self.open != "text":
                    out += self._start(TextBlock(""))
                out.append(self._send(BlockDelta(self.blocks - 1, TextDelta(part.content))))
            for call in part.tool_calls or []:
                if isinstance(call.function.name, str):  # a new call: a new block
                    block = ToolUseBlock(tool_use_id(str(call.id)), call.function.name, {})
                    out += self._start(block)
                if call.function.arguments:
                    partial = InputJSONDelta(call.function.arguments)
                    out.append(self._send(BlockDelta(self.blocks - 1, partial)))
        if delta.finish_reason:
            out += self._stop_block()
        return out

    def closing(self) -> list[bytes]:
        reason, sequence = self._stop(finish_reason(self.choice, self.stream.calls))
        ending = MessageDelta(StopDelta(reason, sequence), self._usage())
        return [self._send(ending), self._send(MessageStop())]

    def failure(self, error: APIError) -> list[bytes]:
        return [b"event: error\ndata: " + _encode(anthropic_error(error)) + b"\n\n"]

    def _start(self, block: ContentBlock) -> list[bytes]:
        out = self._stop_block()
        self.open = "text" if isinstance(block, TextBlock) else "tool_use"
        out.append(self._send(BlockStart(self.blocks, block)))
        self.blocks += 1
        return out

    def _stop_block(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._send(BlockStop(self.blocks - 1))]

    def _send(self, event: Event) -> bytes:
        kind = type(event).__struct_config__.tag
        return b"event: " + str(kind).encode() + b"\ndata: " + _encode(event) + b"\n\n"

    # whole ----------------------------------------------------------------------------
    def add(self, index: int, delta: Delta) -> None:
        self._absorb(delta)

    def whole(self) -> bytes:
        answer = whole_answer(self.choice, self.tools)
        content: list[ContentBlock] = [TextBlock(answer.content)] if answer.content else []
        content += [self._tool_use(call) for call in answer.calls]
        reason, sequence = self._stop(answer.finish_reason)
        return _encode(self._message(content, reason, sequence, self._usage()))

    # shared ---------------------------------------------------------------------------
    def _absorb(self, delta: Delta) -> None:
        self.choice.absorb(delta)
        self.tokens += delta.token_ids

    @staticmethod
    def _tool_use(call: ToolCall) -> ToolUseBlock:
        return ToolUseBlock(tool_use_id(call.id), call.name, tool_input(call.arguments))

    def _stop(self, reason: str | None) -> tuple[StopReason | None, str | None]:
        """Anthropic's stop_reason, and the stop sequence that ended the answer, if one
        did (the worker leaves it out of the text; the tokens still hold it)."""
        if reason in _STOP_REASONS:
            return _STOP_REASONS[reason], None
        if reason != "stop":
            return None, None
        written = b"".join(self.piece(t) for t in self.tokens).decode("utf-8", "replace")
        found = [(written.find(s), s) for s in self.stop_sequences if s and s in written]
        if found:
            return "stop_sequence", min(found)[1]
        return "end_turn", None

    def _usage(self) -> MessageUsage:
        end = self.choice.end
        cached = end.cached_tokens if end is not None else 0
        output = end.completion_tokens if end is not None else len(self.tokens)
        return MessageUsage(self.prompt_tokens - cached, output, 0, cached)

    def _message(
        self,
        content: list[ContentBlock],
        reason: StopReason | None,
        sequence: str | None,
        usage: MessageUsage,
    ) -> Message:
        return Message(
            id=self.id,
            model=self.model_id,
            content=content,
            stop_reason=reason,
            stop_sequence=sequence,
            usage=usage,
        )
