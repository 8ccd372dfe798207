"""A llama.cpp sampler chain per sequence, built from OpenAI-style sampling parameters.

Order follows llama.cpp's common defaults: penalties, top-k, top-p, min-p, temperature,
then the final pick (greedy at temperature 0, else a seeded distribution draw). Each
sequence owns its chain, so a seed gives the same output whatever else is in the batch.
"""

from __future__ import annotations

import ctypes
import random

import llama_cpp as L

from ..messages import SamplingParams


class Sampler:
    def __init__(self, params: SamplingParams, n_vocab: int) -> None:
        self.chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = lambda s: L.llama_sampler_chain_add(self.chain, s)  # noqa: E731
        if params.logit_bias:
            biases = (L.llama_logit_bias * len(params.logit_bias))(
                *(L.llama_logit_bias(token, bias) for token, bias in params.logit_bias)
            )
            add(L.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.presence_penalty or params.frequency_penalty:
            # OpenAI semantics: penalties count generated tokens; -1 = the whole context.
            add(
                L.llama_sampler_init_penalties(
                    n_vocab, -1, 1.0, params.frequency_penalty, params.presence_penalty
                )
            )
        self._greedy = params.temperature <= 0.0
        # Greedy with nothing that changes the logits first: the engine may take the
        # argmax itself (Engine._pick_greedy), the chain would pick the same token.
        self.plain_greedy = (
            self._greedy
            and not params.logit_bias
            and not (params.presence_penalty or params.frequency_penalty)
        )
        if self._greedy:
            add(L.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(L.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(L.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(L.llama_sampler_init_min_p(params.min_p, 1))
        add(L.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(L.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: object, batch_index: int) -> int:
        """Pick from the logits at `batch_index` of the last decode (and accept it)."""
        return L.llama_sampler_sample(self.chain, ctx, batch_index)

    def skip_draws(self, n: int) -> None:
        """Advance the random stream past `n` earlier samples (recompute after a crash):
        llama.cpp's dist sampler draws exactly once per sample, so applying the chain to a
        one-candidate array n times leaves its RNG where the original run had it."""
        if self._greedy or n <= 0:
            return
        candidate = L.llama_token_data(0, 0.0, 1.0)
        array = L.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
        for _ in range(n):
            array.size, array.selected, array.sorted = 1, -1, False
            L.llama_sampler_apply(self.chain, ctypes.byref(array))

    def accept(self, token: int) -> None:
        """Replay a token chosen earlier (recompute after a crash keeps penalties right)."""
        L.llama_sampler_accept(self.chain, token)

    def close(self) -> None:
        if self.chain:
            L.llama_sampler_free(self.chain)
            self.chain = None
