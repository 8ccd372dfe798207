"""Chat completions: deltas into `chat.completion` objects or `chat.completion.chunk`s,
text or tool calls, with logprobs."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from msgspec import UNSET, UnsetType

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .answer import AnswerStream, finish_reason, whole_answer
from .render import SSE_DONE, ChoiceText, RendererBase, sse
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
        include_usage: bool = False,
    ) -> None:
        super().__init__(model_id, n, prompt_tokens, piece, want_logprobs, include_usage)
        self.tools = tools
        self.streams = [AnswerStream(tools) for _ in range(n)]

    # streamed -------------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        return [
            self._chunk(ChatChunkChoice(i, ChatDelta(role="assistant", content="")))
            for i in range(len(self.choices))
        ]

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        choice, stream = self.choices[index], self.streams[index]
        choice.absorb(delta)
        parts = stream.feed(delta)
        logprobs = self._logprobs(delta.logprobs)
        if delta.logprobs and not parts:
            parts = [ChatDelta()]
        out = [
            self._chunk(ChatChunkChoice(index, part, logprobs if j == 0 else None))
            for j, part in enumerate(parts)
        ]
        if delta.finish_reason:
            reason = finish_reason(choice, stream.calls)
            out.append(self._chunk(ChatChunkChoice(index, ChatDelta(), None, reason)))
        return out

    def closing(self) -> list[bytes]:
        usage = [sse(self._envelope([], self.usage()))] if self.include_usage else []
        return [*usage, SSE_DONE]

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
        answer = whole_answer(choice, self.tools)
        message = AssistantMessage(content=answer.content)
        if answer.calls:
            message.tool_calls = [call.to_openai() for call in answer.calls]
        logprobs = self._logprobs(choice.logprobs)
        return ChatChoice(choice.index, message, logprobs, answer.finish_reason)

    # shared ---------------------------------------------------------------------------
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
