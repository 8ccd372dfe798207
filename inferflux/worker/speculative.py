"""Speculative decoding inside the batched step: when to draft, how far, and the rule that
accepts a draft.

A sequence with a draft puts its pending token and its k draft tokens into the step's
shared batch, logits at each. Row j's logits are what a plain decode would have given
after the draft's first j tokens, so sampling the rows in order with the sequence's own
sampler chain (grammar mask first, if any) and stopping at the first row whose sampled
token differs from the draft gives exactly the tokens plain decoding gives, one step
instead of up to k+1. The KV cells of rejected draft tokens are dropped
(`llama_memory_seq_rm`) and the next step writes over them.

The acceptance rule is standard speculative sampling for a draft that is a point mass
(prompt lookup, or a draft model's greedy pick): accept draft token x with probability
p(x); on rejection, sample from p with x removed, renormalised. Drawing t ~ p and
accepting iff t == x has exactly that law, and it is what sampling row by row does, so:
- greedy output is identical to decoding without speculation;
- sampled output has the model's distribution, and with a seed it is the very same text
  as without speculation (one random draw per generated token either way), which is what
  keeps recompute after a worker crash exact: nothing about drafts needs to survive it.

Whether to draft is a throughput decision, made per step. Drafted rows are not free: on
the 2-core CPU this was built on, a row costs about half a lone decode (1 -> 16 sequences
is only ~1.8x), and a sequence whose draft rows differ in count from its neighbours'
makes llama.cpp split the batch into one more ubatch (one more pass over the weights). A
draft of k tokens with per-token acceptance a yields a + a^2 + ... + a^k extra tokens on
average, so a sequence drafts only when that gain per second of extra step time beats
what the step already earns per second (tokens per step / step time). As the batch fills,
the step earns more and rows cost more, and drafting switches itself off; when a
sequence's acceptance drops, so does its gain. The step-cost model (per ubatch, per
row) is calibrated once at start and scaled by every measured step. Acceptance is
counted per sequence, with all sequences' recent rate as its prior; a sequence that does
not draft is still scored for free ("would its draft's first token have been the one
sampled?"), so drafting comes back when the sequence starts copying again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A plan must predict at least this much more throughput than not drafting: the cost
# model is an estimate, and a wrong draft must not cost more than noise.
MIN_GAIN = 1.1
# Per-token acceptance when nothing is known yet, and how many observations it weighs.
PRIOR_ACCEPTANCE = 0.5
PRIOR_WEIGHT = 4.0
# Decay per observation of the acceptance counts (per sequence and global) and per step
# of the step-time scale: recent behaviour counts most.
ACCEPTANCE_DECAY = 0.95
GLOBAL_DECAY = 0.995
SCALE_DECAY = 0.95


def verify(
    draft: Sequence[int], sample: Callable[[int], int], emit: Callable[[int], bool]
) -> tuple[int, int]:
    """Sample rows 0..len(draft) in order; stop at the first token that differs from the
    draft or ends the sequence. `sample(j)` samples row j (and advances the sampler as a
    plain decode would); `emit(token)` takes a sampled token and returns False once the
    sequence has finished. Returns (drafts accepted, rows sampled). The accepted drafts'
    KV cells stay; the token sampled last (if the sequence goes on) is the next pending
    one."""
    for j in range(len(draft) + 1):
        token = sample(j)
        if not emit(token):
            return j, j + 1
        if j == len(draft) or token != draft[j]:
            return j, j + 1
    raise AssertionError("unreachable")


def expected_gain(acceptance: float, k: int) -> float:
    """Extra tokens a k-token draft yields on average: a + a^2 + ... + a^k."""
    if acceptance >= 1.0:
        return float(k)
    return acceptance * (1.0 - acceptance**k) / (1.0 - acceptance)


def count_ubatches(rows_by_slot: Sequence[int]) -> int:
    """How many ubatches llama.cpp splits a step into (per-slot KV streams, split_equal):
    each ubatch takes a run of consecutive slots that still have rows, and the same number
    of rows from each. `rows_by_slot` is indexed by slot (0: not in the step)."""
    left = list(rows_by_slot)
    count = 0
    start = 0
    while True:
        while start < len(left) and left[start] == 0:
            start += 1
        if start == len(left):
            return count
        end = start
        while end < len(left) and left[end] > 0:
            end += 1
        take = min(left[start:end])
        for i in range(start, end):
            left[i] -= take
        count += 1


@dataclass
class StepCost:
    """Step time in seconds: the calibrated model (per_ubatch * ubatches + per_row * rows)
    times `scale` for a step as planned without drafts, plus what the drafts add to the
    model times `draft_scale`. Both scales follow measured steps, so a calibration the
    machine no longer matches (load, heat) is corrected, and so is a wrong split between
    the two terms, which would over- or under-price drafts."""

    per_ubatch: float
    per_row: float
    scale: float = 1.0
    draft_scale: float = 1.0

    def model(self, ubatches: int, rows: int) -> float:
        return self.per_ubatch * ubatches + self.per_row * rows

    def predict(self, ubatches: int, rows: int, base: tuple[int, int] | None = None) -> float:
        """A step of `ubatches` and `rows`; `base`: its (ubatches, rows) without drafts."""
        base_model = self.model(*base) if base else self.model(ubatches, rows)
        extra = self.model(ubatches, rows) - base_model
        return self.scale * base_model + self.draft_scale * extra

    def observe(self, base: tuple[int, int], ubatches: int, rows: int, seconds: float) -> None:
        base_model, model = self.model(*base), self.model(ubatches, rows)
        if seconds <= 0 or base_model <= 0:
            return
        if model == base_model:  # no drafts: how fast the machine is now
            self.scale = SCALE_DECAY * self.scale + (1 - SCALE_DECAY) * seconds / base_model
            return
        # Drafted: what the drafts took beyond the plain step, against the model.
        ratio = (seconds - self.scale * base_model) / (model - base_model)
        ratio = min(max(ratio, 0.2), 5.0)  # one noisy step moves it only so far
        self.draft_scale = SCALE_DECAY * self.draft_scale + (1 - SCALE_DECAY) * ratio

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]]) -> StepCost:
        """Least squares of the relative error over (ubatches, rows, seconds) samples, both
        terms >= 0 (relative: the one-row sample must weigh as much as the 32-row one)."""
        scaled = [(u / t, r / t) for u, r, t in samples if t > 0]  # each sample: target 1
        suu = sum(u * u for u, _ in scaled)
        sur = sum(u * r for u, r in scaled)
        srr = sum(r * r for _, r in scaled)
        sut = sum(u for u, _ in scaled)
        srt = sum(r for _, r in scaled)
        det = suu * srr - sur * sur
        per_ubatch = (srr * sut - sur * srt) / det if det else 0.0
        per_row = (suu * srt - sur * sut) / det if det else 0.0
        if per_ubatch < 0 or per_row < 0:  # noise: fall back to one term
            if per_row < 0:
                per_ubatch, per_row = sut / suu, 0.0
            else:
                per_ubatch, per_row = 0.0, srt / srr
        return cls(per_ubatch, per_row)


class Acceptance:
    """Decayed counts of accepted and rejected draft tokens, with a prior."""

    __slots__ = ("accepted", "rejected")

    def __init__(self) -> None:
        self.accepted = 0.0
        self.rejected = 0.0

    def rate(self, prior: float, weight: float) -> float:
        return (self.accepted + prior * weight) / (self.accepted + self.rejected + weight)

    def add(self, accepted: int, rejected: int, decay: float) -> None:
        self.accepted = decay * self.accepted + accepted
        self.rejected = decay * self.rejected + rejected


@dataclass
class Candidate:
    """A decoding sequence that could draft this step."""

    seq_id: int
    slot: int
    acceptance: float  # estimated per-token acceptance of its draft
    max_k: int  # the draft's length: max_draft_tokens, max_tokens, the slot's free cells


class Planner:
    """Decides, per step, which sequences draft and how many tokens."""

    def __init__(self, cost: StepCost, adaptive: bool = True) -> None:
        self.cost = cost
        self.adaptive = adaptive
        self.overall: dict[str, Acceptance] = {}  # by draft kind, all sequences
        self._per_seq: dict[int, dict[str, Acceptance]] = {}

    def acceptance(self, seq_id: int, kind: str) -> float:
        overall = self.overall.get(kind)
        prior = overall.rate(PRIOR_ACCEPTANCE, PRIOR_WEIGHT) if overall else PRIOR_ACCEPTANCE
        stats = self._per_seq.get(seq_id, {}).get(kind)
        return stats.rate(prior, PRIOR_WEIGHT) if stats else prior

    def record(self, seq_id: int, kind: str, accepted: int, rejected: int) -> None:
        """A draft's outcome (or a free shadow check of a draft's first token)."""
        own = self._per_seq.setdefault(seq_id, {})
        if kind not in own:
            own[kind] = Acceptance()
        own[kind].add(accepted, rejected, ACCEPTANCE_DECAY)
        if kind not in self.overall:
            self.overall[kind] = Acceptance()
        self.overall[kind].add(accepted, rejected, GLOBAL_DECAY)

    def forget(self, seq_id: int) -> None:
        self._per_seq.pop(seq_id, None)

    def plan(
        self, candidates: list[Candidate], n_tokens: int, rows_by_slot: list[int], room: int
    ) -> dict[int, int]:
        """seq_id -> draft length for this step. `n_tokens` tokens come out of the step as
        planned (one per decoding sequence), laid out as `rows_by_slot`; `room` is what
        the batch has left.

        Every sequence that drafts in a step drafts the same k: then neighbouring drafting
        slots share their remainder ubatch (llama.cpp takes equal rows from consecutive
        slots), which is what makes drafting in a full batch affordable where a ubatch
        costs more than a row (GPUs). Each k from 1 to the longest draft is tried, with the
        sequences joining in order of acceptance; the plan with the most predicted
        tokens per second wins if it beats not drafting by MIN_GAIN."""
        if not self.adaptive:
            plan = {}
            for c in candidates:
                k = min(c.max_k, room)
                if k > 0:
                    plan[c.seq_id] = k
                    room -= k
            return plan
        base_ub, base_rows = count_ubatches(rows_by_slot), sum(rows_by_slot)
        base_seconds = self.cost.predict(base_ub, base_rows)
        if base_seconds <= 0 or n_tokens <= 0:
            return {}
        ordered = sorted(candidates, key=lambda c: -c.acceptance)
        n_slots = len(rows_by_slot)
        best: dict[int, int] = {}
        best_rate = n_tokens / base_seconds * MIN_GAIN
        longest = max(c.max_k for c in candidates)
        # k = 1, 2, 4, ... and the longest: the curve is smooth, and at 128 sequences on a
        # ~10 ms GPU step every k tried costs ~0.2 ms of Python.
        ks = sorted({*(1 << i for i in range(longest.bit_length())), longest})
        for k in ks:
            # Sequences join in order of acceptance; every prefix of that order is a plan
            # (a shared remainder ubatch only pays once several have joined).
            tokens, ubatches, rows = float(n_tokens), base_ub, base_rows
            drafting: set[int] = set()
            chosen = {}
            for c in ordered:
                if c.max_k < k or rows - base_rows + k > room:
                    continue
                left = c.slot - 1 >= 0 and rows_by_slot[c.slot - 1] > 0
                right = c.slot + 1 < n_slots and rows_by_slot[c.slot + 1] > 0
                if not left and not right:
                    extra = 0  # alone in its run of slots: its rows stay in its ubatch
                else:  # a remainder ubatch, unless it joins a neighbour's
                    extra = 1 - (c.slot - 1 in drafting) - (c.slot + 1 in drafting)
                tokens += expected_gain(c.acceptance, k)
                ubatches, rows = ubatches + extra, rows + k
                drafting.add(c.slot)
                chosen[c.seq_id] = k
                rate = tokens / self.cost.predict(ubatches, rows, (base_ub, base_rows))
                if rate > best_rate:
                    best, best_rate = dict(chosen), rate
        return best


def calibrate(decode: Callable[[list[tuple[int, int]]], None]) -> StepCost:
    """Time a few batch shapes (list of (slot, rows)) through `decode` and fit the cost
    model: one row, 8 and 32 rows of one slot, and 1 + 8 rows over two slots (two
    ubatches). The fastest of three runs of each counts (this machine is shared)."""
    shapes = [[(0, 1)], [(0, 8)], [(0, 32)], [(0, 1), (1, 8)]]
    decode(shapes[1])  # warm-up: the first decode allocates
    samples = []
    for shape in shapes:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            decode(shape)
            best = min(best, time.perf_counter() - start)
        rows = [0] * (max(slot for slot, _ in shape) + 1)
        for slot, n in shape:
            rows[slot] = n
        samples.append((count_ubatches(rows), sum(rows), best))
    return StepCost.fit(samples)
