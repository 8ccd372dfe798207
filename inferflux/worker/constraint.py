"""Constrained decoding: an llguidance grammar masks one sequence's logits every step.

The grammar (compiled from a JSON schema or a Lark grammar by the ingress) travels in
SamplingParams.grammar. Each sequence gets its own matcher, so constrained and free
sequences share a batch: the mask is applied to that sequence's row of logits only, in
place, just before its sampler chain reads them. Computing a mask takes ~30 us and applying
it ~30 us for SmolLM2's 49k-token vocabulary (measured), next to a ~60 ms batched decode.
"""

from __future__ import annotations

import ctypes
import warnings
from functools import cache, lru_cache

import llguidance
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from .llama import Model


class GrammarError(ValueError):
    """The grammar does not compile (the ingress validates first, so this is a bug)."""


@cache
def grammar_tokenizer(model: Model) -> llguidance.LLTokenizer:
    """llguidance's view of the model's vocabulary (~0.3 s to build; once per model)."""
    with warnings.catch_warnings():
        # llguidance asks llama-cpp-python for each token's attributes through a name
        # deprecated in favour of llama_vocab_get_attr: one warning per token (49k for
        # the default model) and the same answer. Its call, not ours.
        warnings.filterwarnings("ignore", "llama_token_get_attr is deprecated", DeprecationWarning)
        return lltokenizer_from_vocab(model.vocab)


@lru_cache(maxsize=256)
def check_grammar(model: Model, grammar: str) -> str:
    """The compile error of `grammar` for this model's vocabulary, or "" when it is valid.
    Cached: agents send the same schema and tools over and over."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
        grammar, grammar_tokenizer(model)
    )
    return messages[0] if is_error else ""


@lru_cache(maxsize=64)
def compiled(model: Model, grammar: str) -> llguidance.LLMatcher:
    """A matcher in its start state, copied for each sequence. Compiling takes ~250 ms for
    a schema of a dozen fields (measured); a copy takes ~10 us. llguidance drops the GIL
    while compiling, so the worker calls this in a thread and keeps decoding meanwhile."""
    return llguidance.LLMatcher(grammar_tokenizer(model), grammar)


class Constraint:
    def __init__(self, model: Model, grammar: str) -> None:
        self.n_vocab = model.info.n_vocab
        self.matcher = compiled(model, grammar).deep_copy()
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self._mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)

    def apply(self, logits: ctypes.Array | ctypes._Pointer) -> None:
        """Set every token the grammar forbids next to -inf in this row of logits."""
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little", count=self.n_vocab)
        row = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        row[allowed == 0] = -np.inf

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def complete(self) -> bool:
        """The grammar admits nothing more (only end of sequence could follow)."""
        return self.matcher.is_stopped()

    @property
    def failed(self) -> str:
        return self.matcher.get_error() if self.matcher.is_error() else ""
