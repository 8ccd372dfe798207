"""Chat completions: deltas into `chat.completion` objects or `chat.completion.chunk`s,
text or tool calls, with logprobs."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from msgspec import UNSET, UnsetType

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .render import ChoiceText, RendererBase, sse
from .response_types import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    TokenLogprobOut,
    TopLogprob,
    Usage,
)
from .tool_calls import ToolCall, ToolStream, ends_repeating, parse_calls
from .tool_prompt import ToolPlan

_encode = msgspec.json.Encoder().encode


class ChatRenderer(RendererBase):
    id_prefix = "chatcmpl"

    def __init__(
        self,
        model_id: str,
        n: int,
        prompt_tokens: int,
        piece: Callable[[int], bytes],
        tools: ToolPlan,
        want_logprobs: bool,
    ) -> None:
        super().__init__(model_id, n, prompt_tokens, piece, want_logprobs)
        self.tools = tools if tools.active else None
        # Streams split calls from content as the text comes; a whole response parses once.
        self.streams = [
            ToolStream(tools.functions, bool(tools.grammar)) if self.tools else None
            for _ in range(n)
        ]

    # streamed -------------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        return [
            self._chunk(ChatChunkChoice(i, ChatDelta(role="assistant", content="")))
            for i in range(len(self.choices))
        ]

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        choice, stream = self.choices[index], self.streams[index]
        choice.absorb(delta)
        if stream is None:
            parts = [ChatDelta(content=delta.text)] if delta.text else []
        else:
            parts = stream.feed(delta.text)
            if delta.finish_reason:
                parts += stream.finish()
        logprobs = self._logprobs(delta.logprobs)
        if delta.logprobs and not parts:
            parts = [ChatDelta()]
        out = [
            self._chunk(ChatChunkChoice(index, part, logprobs if j == 0 else None))
            for j, part in enumerate(parts)
        ]
        if delta.finish_reason:
            calls = stream.calls if stream is not None else []
            reason = self._finish_reason(choice, calls)
            out.append(self._chunk(ChatChunkChoice(index, ChatDelta(), None, reason)))
        return out

    def usage_chunk(self) -> bytes:
        return sse(self._envelope([], self.usage()))

    # whole ----------------------------------------------------------------------------
    def whole(self) -> bytes:
        return _encode(
            ChatCompletion(
                id=self.id,
                created=self.created,
                model=self.model_id,
                choices=[self._whole_choice(choice) for choice in self.choices],
                usage=self.usage(),
            )
        )

    def _whole_choice(self, choice: ChoiceText) -> ChatChoice:
        text = choice.whole_text
        message = AssistantMessage(content=text)
        reason = choice.finish_reason
        if self.tools is not None:
            content, calls = parse_calls(text, self.tools.functions, bool(self.tools.grammar))
            if calls:
                message = AssistantMessage(
                    content=content or None, tool_calls=[c.to_openai() for c in calls]
                )
                reason = self._finish_reason(choice, calls)
        return ChatChoice(choice.index, message, self._logprobs(choice.logprobs), reason)

    # shared ---------------------------------------------------------------------------
    @staticmethod
    def _finish_reason(choice: ChoiceText, calls: list[ToolCall]) -> str | None:
        """ "tool_calls" when the answer is calls: the model stopped after them, or it ran
        out of tokens repeating one it had already made (small models loop on the
        pattern; the repeat is dropped, so nothing the client gets is cut off)."""
        if calls and (
            choice.finish_reason == "stop"
            or (choice.finish_reason == "length" and ends_repeating(choice.whole_text, calls))
        ):
            return "tool_calls"
        return choice.finish_reason

    def _logprobs(self, items: list[TokenLogprob]) -> ChatLogprobs | None:
        if not self.want_logprobs:
            return None
        return ChatLogprobs(
            [
                TokenLogprobOut(
                    *self._entry(item.token, item.logprob),
                    top_logprobs=[TopLogprob(*self._entry(t, lp)) for t, lp in item.top],
                )
                for item in items
            ]
        )

    def _entry(self, token: int, logprob: float) -> tuple[str, float, list[int]]:
        raw = self.piece(token)
        return raw.decode("utf-8", "replace"), logprob, list(raw)

    def _chunk(self, choice: ChatChunkChoice) -> bytes:
        return sse(self._envelope([choice]))

    def _envelope(
        self, choices: list[ChatChunkChoice], usage: Usage | UnsetType = UNSET
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model_id, choices=choices, usage=usage
        )
