"""What the scheduler keeps of one request: its prompt and sampling, where it runs, and
what its client already has (so a preempted or crashed sequence resumes exactly)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from actors import Envelope

from ..messages import ImageInput, SamplingParams


@dataclass(eq=False)
class Request:
    seq_id: int
    prompt: list[int]
    sampling: SamplingParams
    priority: int
    envelope: Envelope
    arrival: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    worker: int = 0  # which of the node's workers it was placed on (its slot is there)
    slot: int = -1
    admitted_tokens: list[int] = field(default_factory=list)
    prompt_done: int = 0
    resident: bool = False
    cached_tokens: int = 0
    aborted: bool = False  # the client left
    preempting: bool = False  # cancelled by us, to be re-admitted
    text_sent: int = 0  # characters delivered to the client (for recompute)
    trace_id: str = ""
    principal: str = "anonymous"
    crashes: int = 0  # worker crashes it was running in without making progress since
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    images: list[ImageInput] = field(default_factory=list)  # re-encoded on every Admit
    export_kv: bool = False  # a prefill job from a decode node: its KV state goes back
    admissions: int = 0  # how many times it was placed (a remote prefill's answer must
    # belong to the current placement)
    remote: trio.CancelScope | None = None  # while a prefill node computes its prompt
    local_only: bool = False  # its remote prefill failed: prefill it here
    staged: str = ""  # the staging file its worker loads its KV from, until it did
