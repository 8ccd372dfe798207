"""The scheduler's protocol: what it is sent (Submit, Abort, WorkerGaveUp), what a Submit's
stream carries (Delta), and what it refuses with (Overloaded, NotReady, GenerationFailed,
raised to callers as actors.Rejected). All msgspec Structs: the same wherever the scheduler
runs, in the server's process or its own."""

from __future__ import annotations

from typing import Union

import msgspec

from ..messages import FinishReason, ImageInput, KVState, SamplingParams, TokenLogprob


class Submit(msgspec.Struct, tag=True, frozen=True):
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
    images: list[ImageInput] = []
    """The prompt's images (their rows are image ids in `prompt`)."""
    export_kv: bool = False
    """A prefill job from a decode node (issue 14): the last Delta carries the sequence's
    KV state (the prompt's cells; the sampled token is not in them)."""
    within_s: float = 0.0
    """A prefill job: how long its decode node waits for it. Refused at once (Overloaded)
    when the prefill node's backlog would not let it finish in time."""


class Abort(msgspec.Struct, tag=True, frozen=True):
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
    kv_state: KVState | None = None  # the last Delta of a Submit with export_kv


class WorkerGaveUp(msgspec.Struct, tag=True, frozen=True):
    """The worker's supervisor exceeded its restart intensity (sent by the server)."""

    reason: str


SchedulerMessage = Union[Submit, Abort, WorkerGaveUp]


class Overloaded(msgspec.Struct, tag=True, frozen=True):
    """The waiting queue (or the caller's share of it) is full: 429 with Retry-After."""

    message: str
    retry_after_s: int = 1


class NotReady(msgspec.Struct, tag=True, frozen=True):
    """No worker is ready (starting, restarting, or given up): 503."""

    message: str


class GenerationFailed(msgspec.Struct, tag=True, frozen=True):
    """The worker ended the sequence with an error (a grammar that broke mid-way), or the
    request crashed the worker (a poison request): 400."""

    message: str


SchedulerError = Union[Overloaded, NotReady, GenerationFailed]
