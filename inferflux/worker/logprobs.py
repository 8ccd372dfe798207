"""Log-probabilities of sampled tokens, read from a row of logits before any grammar mask."""

from __future__ import annotations

import numpy as np

from ..messages import TokenLogprob


def log_softmax(logits: object, n_vocab: int) -> np.ndarray:
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


def token_logprob(log_probs: np.ndarray, token: int, k: int) -> TokenLogprob:
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(log_probs, -k)[-k:]
        best = best[np.argsort(log_probs[best])[::-1]]
        top = [(int(t), float(log_probs[t])) for t in best]
    return TokenLogprob(token, float(log_probs[token]), top)
