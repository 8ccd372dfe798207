"""Embeddings: a second llama.cpp context on the worker's model, in embedding mode.

It shares the weights with the generation context and is created on the first Embed (a
server nobody asks for embeddings pays nothing). Pooling is the GGUF's own (an embedding
model says mean, CLS or last token); a model that says none or nothing, a chat model,
gets mean pooling. Vectors are L2-normalized, as OpenAI's are.

The inputs of one Embed are packed into as few decodes as fit: up to
EMBEDDING_MAX_TOKENS tokens and MAX_SEQUENCES inputs each, every input whole in one
decode (its pooled vector is computed over that decode's outputs). Runs on the worker's
Trio thread between generation steps: llama.cpp is never touched from two threads.
"""

from __future__ import annotations

import llama_cpp as L
import numpy as np

from ..messages import EMBEDDING_MAX_TOKENS
from .llama import Model, ModelLoadError

MAX_SEQUENCES = 32
"""Inputs per decode (each is a sequence of its own in the batch)."""

POOLINGS = (L.LLAMA_POOLING_TYPE_MEAN, L.LLAMA_POOLING_TYPE_CLS, L.LLAMA_POOLING_TYPE_LAST)


def pooling_of(model: Model) -> int:
    """The pooling the GGUF names, if it is one that gives a vector per input; else mean
    (a reranker's RANK gives a score, not an embedding: refused)."""
    value = model.meta(f"{model.meta('general.architecture')}.pooling_type")
    pooling = int(value) if value.lstrip("-").isdigit() else L.LLAMA_POOLING_TYPE_NONE
    if pooling == L.LLAMA_POOLING_TYPE_RANK:
        raise ModelLoadError("this model is a reranker (pooling RANK): it gives no embeddings")
    return pooling if pooling in POOLINGS else L.LLAMA_POOLING_TYPE_MEAN


def pack(lengths: list[int], max_tokens: int, max_sequences: int) -> list[list[int]]:
    """Input indices grouped in order into decodes of at most `max_tokens` tokens and
    `max_sequences` inputs (an input is never split)."""
    groups: list[list[int]] = []
    tokens = 0
    for index, length in enumerate(lengths):
        if not groups or tokens + length > max_tokens or len(groups[-1]) >= max_sequences:
            groups.append([])
            tokens = 0
        groups[-1].append(index)
        tokens += length
    return groups


class Embedder:
    def __init__(self, model: Model, n_threads: int) -> None:
        params = L.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = pooling_of(model)
        params.n_ctx = params.n_batch = params.n_ubatch = EMBEDDING_MAX_TOKENS
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True  # the sequences of one decode share its cells
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ModelLoadError("llama.cpp could not create an embedding context")
        self.memory = L.llama_get_memory(self.ptr)
        self.batch = L.llama_batch_init(EMBEDDING_MAX_TOKENS, 0, 1)
        self.dimensions = L.llama_model_n_embd(model.ptr)

    def embed(self, inputs: list[list[int]]) -> list[bytes]:
        """One unit-length float32 vector per input, as bytes."""
        vectors: list[bytes] = [b""] * len(inputs)
        lengths = [len(tokens) for tokens in inputs]
        if not inputs or min(lengths) < 1 or max(lengths) > EMBEDDING_MAX_TOKENS:
            raise ValueError(f"each input must have 1 to {EMBEDDING_MAX_TOKENS} tokens")
        for group in pack(lengths, EMBEDDING_MAX_TOKENS, MAX_SEQUENCES):
            L.llama_memory_clear(self.memory, True)
            row = 0
            for seq, index in enumerate(group):
                for position, token in enumerate(inputs[index]):
                    self.batch.token[row] = token
                    self.batch.pos[row] = position
                    self.batch.n_seq_id[row] = 1
                    self.batch.seq_id[row][0] = seq
                    self.batch.logits[row] = 1  # pooling needs every token's output
                    row += 1
            self.batch.n_tokens = row
            if L.llama_decode(self.ptr, self.batch) != 0:
                raise RuntimeError("llama_decode failed on an embedding batch")
            for seq, index in enumerate(group):
                pooled = L.llama_get_embeddings_seq(self.ptr, seq)
                vector = np.ctypeslib.as_array(pooled, shape=(self.dimensions,)).astype(np.float32)
                norm = float(np.linalg.norm(vector))
                vectors[index] = (vector / norm if norm > 0 else vector).astype("<f4").tobytes()
        return vectors

    def close(self) -> None:
        if self.ptr:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ptr)
            self.ptr = None
