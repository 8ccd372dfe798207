"""Response rendering: a generation's deltas into one JSON body or server-sent events.

A renderer (one per response shape: chat_render, completion_render, responses_render,
messages_render) knows what to send; the two drivers here know how a response is sent:

    stream_events   the renderer's opening events, its events per delta, its closing
                    events; an error after the headers went out travels as the renderer's
                    failure events (the status line is gone by then)
    whole_body      every delta absorbed, then one JSON body
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import msgspec

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .errors import APIError
from .response_types import Usage

SSE_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def sse(payload: object) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class ChoiceText:
    """What one choice has received so far: its text, logprobs and finish."""

    def __init__(self, index: int, prefix: str = "") -> None:
        self.index = index
        self.text: list[str] = [prefix] if prefix else []
        self.logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.end: Delta | None = None  # the finishing delta (its usage counts)

    def absorb(self, delta: Delta) -> None:
        self.text.append(delta.text)
        self.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
            self.end = delta

    @property
    def whole_text(self) -> str:
        return "".join(self.text)


def total_usage(prompt_tokens: int, choices: list[ChoiceText]) -> Usage:
    """Usage of all choices: the prompt counts once (its KV cells are shared)."""
    ends = [choice.end for choice in choices if choice.end is not None]
    completion = sum(end.completion_tokens for end in ends)
    return Usage.of(prompt_tokens, completion, ends[0].cached_tokens if ends else 0)


class RendererBase:
    """What the OpenAI renderers keep: the response's id and time, its choices, their
    usage; streams end with the usage chunk when asked for, then [DONE]."""

    id_prefix = ""

    def __init__(
        self,
        model_id: str,
        n: int,
        prompt_tokens: int,
        piece: Callable[[int], bytes],
        want_logprobs: bool,
        include_usage: bool,
        echo: str = "",
    ) -> None:
        self.id, self.created, self.model_id = response_id(self.id_prefix), now(), model_id
        self.include_usage = include_usage
        self.prompt_tokens = prompt_tokens
        self.piece = piece  # token id -> its bytes, for logprobs
        self.want_logprobs = want_logprobs
        self.choices = [ChoiceText(i, echo) for i in range(n)]

    def add(self, index: int, delta: Delta) -> None:
        self.choices[index].absorb(delta)

    def usage(self) -> Usage:
        return total_usage(self.prompt_tokens, self.choices)

    def failure(self, error: APIError) -> list[bytes]:
        # Headers are gone already: the error travels as an SSE event, then the end.
        return [b"data: " + error.body() + b"\n\n", SSE_DONE]


class Renderer(Protocol):
    def opening(self) -> list[bytes]:
        """Stream events sent before the first delta."""

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        """Absorb a streamed delta of choice `index`; the events it makes ready."""

    def closing(self) -> list[bytes]:
        """Stream events after every choice finished."""

    def failure(self, error: APIError) -> list[bytes]:
        """Stream events that end a stream which failed after it started."""

    def add(self, index: int, delta: Delta) -> None:
        """Absorb a delta of a response sent whole."""

    def whole(self) -> bytes:
        """The whole response, once every choice has finished."""


async def stream_events(
    renderer: Renderer,
    deltas: AsyncIterator[tuple[int, Delta]],
    close: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed response; `close` runs however it ends."""
    try:
        for event in renderer.opening():
            yield event
        async for index, delta in deltas:
            for event in renderer.chunks(index, delta):
                yield event
        for event in renderer.closing():
            yield event
    except APIError as error:
        for event in renderer.failure(error):
            yield event
    finally:
        await close()


async def whole_body(
    renderer: Renderer,
    deltas: AsyncIterator[tuple[int, Delta]],
    close: Callable[[], Awaitable[None]],
) -> bytes:
    try:
        async for index, delta in deltas:
            renderer.add(index, delta)
    finally:
        await close()
    return renderer.whole()
