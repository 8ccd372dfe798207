"""Messages between the scheduler and device workers (the engine's wire protocol).

Hot-path Structs are array_like and gc=False: one StepResult per engine step carries every
sequence's new tokens, never one message per token.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

# preempted: the worker ran out of KV cells for it; the scheduler re-admits it by recompute.
FinishReason = Literal["stop", "length", "cancelled", "preempted", "error"]


class SamplingParams(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: str = ""  # an llguidance grammar (JSON schema, Lark): masks logits each step
    logprobs: int = -1  # -1: none; 0: the chosen token's logprob; k: also the k likeliest


class ImageInput(msgspec.Struct, frozen=True, array_like=True):
    """An image of a prompt (issue 16), decoded to 8-bit RGB by the ingress, and where its
    rows are: `spans[i]` = (index in the prompt, rows) of its i-th image chunk, in the
    order the projector lays them out. Those prompt entries are image ids, not tokens
    (negative, from `digest`): the prefix cache matches them like tokens, so the same image
    is a hit and another one is not. The worker encodes the image on every Admit
    (recompute after a crash included) unless it lies wholly in the reused prefix."""

    digest: str
    width: int
    height: int
    rgb: bytes
    spans: list[tuple[int, int]]


class KVState(msgspec.Struct, frozen=True, array_like=True):
    """A sequence's KV, exported by a prefill node's worker for a decode node's
    (llama_state_seq_get_data): the cells of `n_tokens` prompt tokens, `size` bytes in the
    staging file `name` (kvcache/staging.py) on the host `host` (staging.host_id). Only
    this handle travels in messages. `fingerprint` names the model and KV layout it was
    computed with; a worker whose own differs refuses it and prefills itself."""

    fingerprint: str
    n_tokens: int
    name: str
    size: int
    host: str


class Admit(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Start a sequence in `slot`.

    The slot's KV already holds `tokens[:n_cached]` (a cached prefix the scheduler matched),
    after copying it from slot `copy_from` when copy_from >= 0. The worker
    drops anything in the slot past n_cached, prefills the rest in chunks, then decodes.
    `n_generated` > 0 re-admits a sequence by recompute: the last `n_generated` tokens of
    `tokens` were already sent to the client and count against max_tokens; their text is
    replayed through a fresh detokenizer and only what follows `text_sent` characters is
    emitted (text held back at the crash, a split UTF-8 character or a possible stop
    string, is neither lost nor duplicated).
    """

    seq_id: int
    slot: int
    tokens: list[int]
    sampling: SamplingParams
    n_cached: int = 0
    copy_from: int = -1
    n_generated: int = 0
    text_sent: int = 0  # recompute: characters of text the client already has
    trace_id: str = ""  # the request's W3C trace id, for the worker's logs
    images: list[ImageInput] = []
    # Disaggregated prefill (issue 14). On a prefill node: export the sequence's KV to the
    # staging file of this name when it finishes (SeqOutput.kv_state). On a decode node:
    # the slot's KV comes from this state (it holds tokens[:kv_state.n_tokens], n_cached
    # says the same) instead of copy_from.
    export_to: str = ""
    kv_state: KVState | None = None


class Cancel(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Stop a sequence now; its StepResult output carries finish_reason 'cancelled'."""

    seq_id: int
    trace_id: str = ""


class Attach(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Open the worker's result stream: WorkerReady first, then one StepResult per step."""


EMBEDDING_MAX_TOKENS = 512
"""The longest input an Embed may carry: a pooled embedding is computed over one decode,
and llama.cpp keeps logits for every token of it (vocabulary x tokens floats), so the
worker's embedding context is sized for this many tokens per decode."""


class Embed(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Embed each input (token ids, at most EMBEDDING_MAX_TOKENS each): answered with
    Embedded. Sent to the scheduler, which hands it to its worker."""

    inputs: list[list[int]]
    trace_id: str = ""


class Embedded(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """One vector per input, in order: little-endian float32, unit length (L2)."""

    vectors: list[bytes]
    dimensions: int


class EmbeddingRefused(msgspec.Struct, tag=True, frozen=True):
    """The worker cannot embed these inputs (a reranker model, an input out of bounds, a
    decode that failed): the worker goes on serving."""

    message: str


WorkerMessage = Union[Admit, Cancel, Attach, Embed]


class WorkerReady(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """First on the result stream: this worker's KV cache is empty and it takes Admits.
    `fingerprint`: the model and KV layout its exported states have (KVState), and the
    only ones it loads."""

    fingerprint: str = ""


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A sampled token's log-probability under the model, and the likeliest alternatives."""

    token: int
    logprob: float
    top: list[tuple[int, float]] = []


class SeqOutput(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq_id: int
    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    n_prompt_computed: int = 0  # prompt tokens actually prefilled this step
    kv_tokens: int = 0  # tokens of this sequence now held in KV (on finish: what stays cached)
    logprobs: list[TokenLogprob] = []  # one per token_ids entry, when requested
    error: str = ""  # finish_reason "error": what went wrong (a grammar that broke)
    kv_state: KVState | None = None  # on finishing, when the Admit had export_to


class StepResult(msgspec.Struct, tag=True, frozen=True, array_like=True, gc=False):
    step: int
    n_seqs: int  # sequences in this step's batch
    n_tokens: int  # tokens in this step's batch (decode + prefill)
    duration_s: float
    outputs: list[SeqOutput]
    n_drafted: int = 0  # speculative decoding: draft tokens verified in this step
    n_accepted: int = 0  # ... and how many of them were accepted
    images_encoded: int = 0  # images encoded since the last step (off the step loop)
    encode_s: float = 0.0  # ... and the seconds their encoding took


WorkerReply = Union[WorkerReady, StepResult, Embedded]
