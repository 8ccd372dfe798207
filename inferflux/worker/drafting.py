"""Where draft tokens come from: the Drafter interface and prompt lookup (n-gram) drafting.

A drafter guesses the next tokens of a sequence; the engine checks the guess inside its
batched step (inferflux/worker/speculative.py). Drafts are plain token lists, the
drafter's best guesses, with no probabilities: verification treats a draft as a point
mass, which keeps the output distribution exactly the model's (see `verify`). A draft
model (same vocabulary) fits the same four calls: it keeps its own KV per sequence,
`extend` tells it which tokens became real (it rolls back the rest of its guess), and
`propose` gets every sequence that wants a draft at once, so it can decode them as one
batch of its own.

Prompt lookup: the last n tokens of a sequence (n from ngram_max down to ngram_min) are
looked up among its earlier tokens (prompt and output); the tokens that followed their
latest earlier occurrence are the draft. Editing code, fixing typos or extracting fields
copies long spans of the prompt, and those spans come back verbatim. An index from
n-gram to the position after its latest occurrence makes a lookup O(1) per size; it
costs ~1 us per token and size to keep up to date.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    # What produced it ("ngram4": a 4-token match): acceptance is counted per kind, so a
    # long match is trusted more than a short one until a sequence shows otherwise.
    kind: str


class Drafter(Protocol):
    def add(self, seq_id: int, tokens: Sequence[int]) -> None:
        """A sequence starts (or is recomputed): everything it holds so far, in order."""

    def extend(self, seq_id: int, tokens: Sequence[int]) -> None:
        """These tokens follow the sequence's last ones (generated, now final)."""

    def propose(self, wants: Mapping[int, int]) -> dict[int, Draft]:
        """Drafts for the sequences in `wants` (seq_id -> most tokens wanted), continuing
        each sequence's tokens. A sequence with nothing to propose is left out."""

    def remove(self, seq_id: int) -> None:
        """The sequence ended; forget it."""


class _History:
    __slots__ = ("tokens", "follows")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        # n-gram (as a tuple) -> index in `tokens` of the token after its latest occurrence
        self.follows: dict[tuple[int, ...], int] = {}


class NgramDrafter:
    """Prompt lookup decoding: drafts are copies of what followed an earlier occurrence of
    the sequence's last n tokens."""

    def __init__(self, ngram_min: int = 2, ngram_max: int = 6) -> None:
        if not 1 <= ngram_min <= ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {ngram_min}, {ngram_max}")
        self.sizes = range(ngram_max, ngram_min - 1, -1)  # longest match first
        self._kinds = {n: f"ngram{n}" for n in self.sizes}
        self._seqs: dict[int, _History] = {}

    def add(self, seq_id: int, tokens: Sequence[int]) -> None:
        self._seqs[seq_id] = _History()
        self.extend(seq_id, tokens)

    def extend(self, seq_id: int, tokens: Sequence[int]) -> None:
        history = self._seqs[seq_id]
        own, follows = history.tokens, history.follows
        for token in tokens:
            end = len(own)  # the n-grams ending just before `token` are now followed by it
            for n in self.sizes:
                if end >= n:
                    follows[tuple(own[end - n : end])] = end
            own.append(token)

    def propose(self, wants: Mapping[int, int]) -> dict[int, Draft]:
        drafts = {}
        for seq_id, k in wants.items():
            history = self._seqs.get(seq_id)
            if history is None or k <= 0:
                continue
            own = history.tokens
            for n in self.sizes:
                if len(own) <= n:
                    continue
                start = history.follows.get(tuple(own[-n:]))
                if start is not None:
                    draft = own[start : start + k]
                    if min(draft, default=0) < 0:  # image ids (issue 16) are no tokens
                        draft = draft[: next(i for i, t in enumerate(draft) if t < 0)]
                    if draft:
                        drafts[seq_id] = Draft(draft, self._kinds[n])
                    break
        return drafts

    def remove(self, seq_id: int) -> None:
        self._seqs.pop(seq_id, None)
