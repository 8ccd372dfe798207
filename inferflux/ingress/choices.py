"""One choice of a response, assembled from its deltas: text or tool calls, logprobs.

The same object serves both shapes: `add()` returns the pieces for a stream chunk as they
come, and `message()`/`text_choice()` the whole choice once the generation finished.
"""

from __future__ import annotations

from typing import Any, Callable

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .tools import ToolCall, ToolPlan, ToolStream, ends_repeating, parse_calls


class Choice:
    def __init__(
        self,
        index: int,
        kind: str,  # "chat" or "completion"
        piece: Callable[[int], bytes],
        tools: ToolPlan | None = None,
        echo: str = "",
        want_logprobs: bool = False,
    ) -> None:
        self.want_logprobs = want_logprobs
        self.offset = len(echo)  # completions' text_offset of the next token
        self.index = index
        self.kind = kind
        self.piece = piece
        self.tools = tools if tools is not None and tools.active else None
        self.stream = (
            ToolStream(self.tools.functions, bool(self.tools.grammar)) if self.tools else None
        )
        self.text: list[str] = [echo] if echo else []
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.delta: Delta | None = None  # the finishing delta (usage counts)

    # streaming --------------------------------------------------------------------------
    def add(self, delta: Delta) -> list[dict[str, Any]]:
        """The delta payloads this delta adds to a chat stream ({"content"} or
        {"tool_calls"}), or for completions one {"text"}."""
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
            self.delta = delta
        if self.stream is None:
            return (
                [{"content" if self.kind == "chat" else "text": delta.text}] if delta.text else []
            )
        parts = self.stream.feed(delta.text)
        if delta.finish_reason:
            parts += self.stream.finish()
        return parts

    @property
    def final_reason(self) -> str | None:
        return self._reason(self.calls)

    def _reason(self, calls: list[ToolCall]) -> str | None:
        """ "tool_calls" when the answer is calls: the model stopped after them, or it ran
        out of tokens repeating one it had already made (small models loop on the
        pattern; the repeat is dropped, so nothing the client gets is cut off)."""
        if calls and (
            self.finish_reason == "stop"
            or (self.finish_reason == "length" and ends_repeating("".join(self.text), calls))
        ):
            return "tool_calls"
        return self.finish_reason

    @property
    def calls(self) -> list[ToolCall]:
        if self.stream is not None:
            return self.stream.calls
        return []

    # whole responses --------------------------------------------------------------------
    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self.tools is not None:
            content, calls = parse_calls(text, self.tools.functions, bool(self.tools.grammar))
            if calls:
                message = {
                    "role": "assistant",
                    "content": content or None,
                    "tool_calls": [c.to_openai() for c in calls],
                }
                self.finish_reason = self._reason(calls)
        return {
            "index": self.index,
            "message": message,
            "logprobs": self.chat_logprobs(self.logprobs),
            "finish_reason": self.finish_reason,
        }

    def text_choice(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": "".join(self.text),
            "logprobs": self.completion_logprobs(self.logprobs),
            "finish_reason": self.finish_reason,
        }

    # logprobs ---------------------------------------------------------------------------
    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.piece(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    def chat_logprobs(self, items: list[TokenLogprob]) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        return {
            "content": [
                {
                    **self._entry(item.token, item.logprob),
                    "top_logprobs": [self._entry(t, lp) for t, lp in item.top],
                }
                for item in items
            ]
        }

    def completion_logprobs(self, items: list[TokenLogprob]) -> dict[str, Any] | None:
        """Completions' logprobs for `items`, the next tokens of this choice (offsets count
        from the start of the text, echo included, by token piece)."""
        if not self.want_logprobs:
            return None
        tokens, offsets = [], []
        for item in items:
            offsets.append(self.offset)
            text = self.piece(item.token).decode("utf-8", "replace")
            tokens.append(text)
            self.offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [item.logprob for item in items],
            "top_logprobs": [
                {self.piece(t).decode("utf-8", "replace"): lp for t, lp in item.top}
                for item in items
            ],
            "text_offset": offsets,
        }
