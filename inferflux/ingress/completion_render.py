"""Text completions: deltas into `text_completion` objects, whole or as stream chunks,
with the prompt echoed first when asked, and completions-style logprobs."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from msgspec import UNSET, UnsetType

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .render import SSE_DONE, RendererBase, sse
from .response_types import Completion, CompletionChoice, CompletionLogprobs, Usage

_encode = msgspec.json.Encoder().encode


class CompletionRenderer(RendererBase):
    id_prefix = "cmpl"

    def __init__(
        self,
        model_id: str,
        n: int,
        prompt_tokens: int,
        piece: Callable[[int], bytes],
        echo: str,
        want_logprobs: bool,
        include_usage: bool = False,
    ) -> None:
        super().__init__(model_id, n, prompt_tokens, piece, want_logprobs, include_usage, echo)
        self.echo = echo
        # Each choice's text_offset of its next token (the echo counts).
        self.offsets = [len(echo)] * n

    # streamed -------------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        if not self.echo:
            return []
        return [self._chunk(CompletionChoice(i, self.echo)) for i in range(len(self.choices))]

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        self.choices[index].absorb(delta)
        logprobs = self._logprobs(index, delta.logprobs)
        out = []
        if delta.text or delta.logprobs:
            out.append(self._chunk(CompletionChoice(index, delta.text, logprobs)))
        if delta.finish_reason:
            out.append(self._chunk(CompletionChoice(index, "", None, delta.finish_reason)))
        return out

    def closing(self) -> list[bytes]:
        usage = [sse(self._completion([], self.usage()))] if self.include_usage else []
        return [*usage, SSE_DONE]

    # whole ----------------------------------------------------------------------------
    def whole(self) -> bytes:
        choices = [
            CompletionChoice(
                c.index, c.whole_text, self._logprobs(c.index, c.logprobs), c.finish_reason
            )
            for c in self.choices
        ]
        return _encode(self._completion(choices, self.usage()))

    # shared ---------------------------------------------------------------------------
    def _logprobs(self, index: int, items: list[TokenLogprob]) -> CompletionLogprobs | None:
        """Logprobs of `items`, the next tokens of choice `index` (offsets count from the
        start of its text, echo included, by token piece)."""
        if not self.want_logprobs:
            return None
        tokens, offsets = [], []
        for item in items:
            offsets.append(self.offsets[index])
            text = self.piece(item.token).decode("utf-8", "replace")
            tokens.append(text)
            self.offsets[index] += len(text)
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[item.logprob for item in items],
            top_logprobs=[
                {self.piece(t).decode("utf-8", "replace"): lp for t, lp in item.top}
                for item in items
            ],
            text_offset=offsets,
        )

    def _chunk(self, choice: CompletionChoice) -> bytes:
        return sse(self._completion([choice]))

    def _completion(
        self, choices: list[CompletionChoice], usage: Usage | UnsetType = UNSET
    ) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model_id, choices=choices, usage=usage
        )
