"""POST /v1/embeddings: the inputs tokenized here, embedded by the model's workers.

The inputs go to a worker one decode's worth at a time (worker/embedding.py packs the
same way): between two Embed messages the worker runs its generation steps, so a request
with two thousand inputs slows the streams under way a little, never stops them. The
gate admits an embedding request like a generation with no output (the key's models, its
token rate: prompt tokens only) and audits it.

With `--workers N`, each of those pieces goes to the next worker in turn (over all
requests), so embeddings spread over the node's workers. A worker that is not there
(restarting) is skipped for the next one; with none there the request waits for one and
asks again (an Embed has no state). Inputs that were being embedded in two crashes in a
row are refused (400), as the scheduler refuses a poison request.
"""

from __future__ import annotations

import base64
import itertools

import msgspec
import numpy as np
import trio
from quart import Response

from actors import ActorCrashed, ActorError, ActorRef, Rejected

from ..messages import EMBEDDING_MAX_TOKENS, Embed, Embedded, SamplingParams
from ..worker.embedding import MAX_SEQUENCES, pack
from .context import current
from .embeddings_types import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage
from .errors import APIError
from .generation import next_seq_id
from .http import json_bytes, read_json
from .limits import MAX_EMBEDDING_INPUTS
from .pipeline import Prepared, off_loop
from .served import ServedModel
from .services import Services

DECODER = msgspec.json.Decoder(EmbeddingRequest)
ENCODER = msgspec.json.Encoder()
WORKER_WAIT_S = 30.0
"""How long a request waits for a restarting worker before 503."""
_turns = itertools.count()
"""Which worker takes the next piece: one count over every request."""
CALL_TIMEOUT_S = 120.0
"""One Embed (one decode) on a busy CPU."""


async def embeddings(services: Services) -> Response:
    body = await read_json(DECODER, services.max_body_bytes)
    lease = await services.models.acquire(body.model, body.keep_alive)
    try:
        model = lease.model
        if body.dimensions is not None and body.dimensions != model.embedding_size:
            raise _invalid(
                f"this model's embeddings have {model.embedding_size} dimensions; it cannot "
                f"give {body.dimensions}",
                "dimensions",
            )
        inputs = await off_loop(token_lists, model, body.input)
        context = current()
        prompt = [token for tokens in inputs for token in tokens]
        prepared = Prepared(prompt, 0, 0, SamplingParams(max_tokens=0), n=1, priority=0)
        await services.gate.admit(context, model, prepared, next_seq_id())
        services.metrics.for_model(model.id).of_api("embeddings").inc()
        vectors = await embed_all(lease.workers, inputs, context.trace_id)
        services.gate.ended(context, 200, "stop")
    finally:
        lease.release()
    data = [
        Embedding(i, _encoded(vector, body.encoding_format)) for i, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(len(prompt), len(prompt))
    return json_bytes(ENCODER.encode(EmbeddingList(data, model.id, usage)))


def token_lists(model: ServedModel, value: str | list) -> list[list[int]]:
    """Each input's tokens: strings tokenized (special-token text stays text), token ids
    checked against the vocabulary. Blocking: run it off the event loop."""
    if isinstance(value, str):
        value = [value]
    if not value:
        raise _invalid("input must not be empty", "input")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise _invalid(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", "input")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        value = [value]  # one input given as token ids
    inputs: list[list[int]] = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if isinstance(item, str):
            if not item:
                raise _invalid("an input must not be an empty string", param)
            tokens = model.tokenizer.tokenize(item, add_special=True, parse_special=False)
        elif isinstance(item, list) and item and all(_is_token(t, model.n_vocab) for t in item):
            tokens = item
        else:
            raise _invalid(
                "input must be a string, an array of strings, an array of token ids or an "
                f"array of arrays of token ids (ids below {model.n_vocab})",
                param,
            )
        if len(tokens) > EMBEDDING_MAX_TOKENS:
            raise APIError(400, f"input {index} has {len(tokens)} tokens; an input may have "
                           f"at most {EMBEDDING_MAX_TOKENS}", param=param,
                           code="context_length_exceeded")  # fmt: skip
        inputs.append(tokens)
    return inputs


async def embed_all(workers: list[ActorRef], inputs: list[list[int]], trace_id: str) -> list[bytes]:
    vectors: list[bytes] = []
    for group in pack([len(t) for t in inputs], EMBEDDING_MAX_TOKENS, MAX_SEQUENCES):
        reply = await _ask(workers, Embed([inputs[i] for i in group], trace_id))
        vectors.extend(reply.vectors)
    return vectors


async def _ask(workers: list[ActorRef], embed: Embed) -> Embedded:
    deadline = trio.current_time() + WORKER_WAIT_S
    crashes = 0
    turn = next(_turns)
    missing = 0  # workers found not there, in a row
    while True:
        worker = workers[turn % len(workers)]
        turn += 1
        try:
            return await worker.call(embed, timeout_s=CALL_TIMEOUT_S)
        except Rejected as refusal:
            raise APIError(400, str(refusal), code="embedding_failed") from None
        except ActorCrashed:
            crashes += 1  # it died with these inputs in hand
            if crashes >= 2:
                raise APIError(400, "these inputs crashed the model worker twice; not "
                               "retried", code="embedding_failed") from None  # fmt: skip
        except ActorError:
            missing += 1
            if missing < len(workers):
                continue  # not there (restarting): the next one, at once
            missing = 0
        if trio.current_time() > deadline:
            raise APIError(503, "the model worker is restarting; try again later",
                           type="service_unavailable", code="not_ready",
                           retry_after_s=5)  # fmt: skip
        await trio.sleep(0.2)


def _is_token(value: object, n_vocab: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab


def _encoded(vector: bytes, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector).decode("ascii")
    return np.frombuffer(vector, dtype="<f4").tolist()


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")
