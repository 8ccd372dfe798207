"""Messages between the ingress and the scheduler (same process: passed as objects)."""

from __future__ import annotations

import msgspec

from ..messages import FinishReason, SamplingParams, TokenLogprob


class Submit(msgspec.Struct, frozen=True):
    """Generate for `prompt`; opened as a stream, answered with Delta items.

    `generated` / `text_sent` resume a stream the client already partly has (the ingress
    resubmits after a scheduler crash): generation continues after those tokens."""

    seq_id: int
    prompt: list[int]
    sampling: SamplingParams
    priority: int = 0
    trace_id: str = ""
    generated: list[int] = []
    text_sent: int = 0
    principal: str = "anonymous"
    """Who asked (the policy's principal): the waiting queue is shared fairly by it."""


class Abort(msgspec.Struct, frozen=True):
    """The client went away: stop the sequence and free its slot."""

    seq_id: int
    trace_id: str = ""


class Delta(msgspec.Struct, frozen=True, array_like=True, gc=False):
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] = []


class Overloaded(Exception):
    """The waiting queue (or the caller's share of it) is full: answer 429 with
    Retry-After."""

    def __init__(self, why: str, retry_after_s: int = 1) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"server overloaded: {why}")


class GenerationFailed(Exception):
    """The worker ended the sequence with an error (a grammar that broke mid-way)."""


class NotReady(Exception):
    """No worker is ready (starting, restarting, or given up): answer 503."""
