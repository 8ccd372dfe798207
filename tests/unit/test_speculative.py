"""Speculative decoding's pure parts: the acceptance rule (statistically), prompt lookup,
the ubatch count, the step-cost fit, and the planner switching drafting off."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferflux.worker.drafting import NgramDrafter
from inferflux.worker.speculative import (
    Candidate,
    Planner,
    StepCost,
    count_ubatches,
    expected_gain,
    verify,
)


def collect(out: list[int]):  # noqa: ANN201
    """An emit that keeps every token and never ends the sequence."""
    return lambda token: out.append(token) is None


def test_verify_keeps_the_model_distribution_for_a_point_draft() -> None:
    """A small case of standard speculative sampling with a deterministic draft: the first
    token must follow p0 whatever the draft, the draft token is accepted with probability
    p0(x), a rejection samples p0 with x removed and renormalised, and only after an
    acceptance is the second row (p1) sampled. Sampling is the real rule: draw from the
    row's distribution, accept while the draw equals the draft."""
    rng = np.random.default_rng(7)
    p0 = np.array([0.5, 0.3, 0.15, 0.05])
    p1 = np.array([0.1, 0.2, 0.3, 0.4])
    draft = [1, 3]  # x = 1 for row 0 (p0(x) = 0.3), then 3 for row 1
    n = 40_000
    firsts, seconds, accepted_counts = [], [], []

    def sample(j: int) -> int:
        return int(rng.choice(4, p=(p0, p1, p1)[j]))

    for _ in range(n):
        emitted: list[int] = []
        accepted, rows = verify(draft, sample, collect(emitted))
        assert rows == len(emitted) == accepted + 1
        firsts.append(emitted[0])
        accepted_counts.append(accepted)
        if accepted >= 1:
            seconds.append(emitted[1])
    firsts_a, accepted_a = np.array(firsts), np.array(accepted_counts)

    def chi2(observed: np.ndarray, expected_p: np.ndarray) -> float:
        counts = np.bincount(observed, minlength=len(expected_p))
        expected = expected_p * len(observed)
        keep = expected > 0
        return float((((counts - expected) ** 2)[keep] / expected[keep]).sum())

    # 3 degrees of freedom: chi2 < 16.3 at p = 0.001.
    assert chi2(firsts_a, p0) < 16.3  # the first token is distributed as p0
    acceptance = float((accepted_a >= 1).mean())
    assert abs(acceptance - p0[1]) < 4 * np.sqrt(p0[1] * (1 - p0[1]) / n)
    rejected = firsts_a[accepted_a == 0]
    residual = np.where(np.arange(4) == 1, 0.0, p0)
    residual /= residual.sum()
    assert np.all(rejected != 1)
    assert chi2(rejected, residual) < 16.3  # p0 without x, renormalised
    assert chi2(np.array(seconds), p1) < 16.3  # the next row is sampled as usual


def test_verify_stops_where_the_sequence_ends() -> None:
    emitted: list[int] = []

    def emit(token: int) -> bool:
        emitted.append(token)
        return token != 9  # 9 ends the sequence (a stop string, say)

    sampled = iter([5, 9, 7])
    assert verify([5, 9, 7], lambda j: next(sampled), emit) == (1, 2)
    assert emitted == [5, 9]


def test_verify_greedy_accepts_the_longest_matching_prefix() -> None:
    target = [4, 8, 15, 16, 23]
    out: list[int] = []
    accepted, rows = verify([4, 8, 99, 16], lambda j: target[j], collect(out))
    assert (accepted, rows) == (2, 3)
    assert out == [4, 8, 15]  # two drafts accepted, the model's own token after them
    out.clear()
    assert verify([4, 8, 15, 16], lambda j: target[j], collect(out)) == (4, 5)
    assert out == target  # all accepted, plus the bonus token of the last row


def test_expected_gain() -> None:
    assert expected_gain(0.5, 1) == 0.5
    assert expected_gain(0.5, 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert expected_gain(1.0, 4) == 4.0
    assert expected_gain(0.0, 4) == 0.0


def brute_force_ubatches(rows_by_slot: list[int]) -> int:
    """llama.cpp's split_equal walked token by token: a ubatch takes the first unused
    token's sequence, then each next sequence whose id is one more than the last taken,
    then the same number of tokens from each (the fewest any of them has left)."""
    tokens = [slot for slot, n in enumerate(rows_by_slot) for _ in range(n)]
    used = [False] * len(tokens)
    count = 0
    while not all(used):
        chosen: list[int] = []
        for i, slot in enumerate(tokens):
            if used[i] or slot in chosen:
                continue
            if not chosen or slot == chosen[-1] + 1:
                chosen.append(slot)
        left = {s: sum(1 for i, t in enumerate(tokens) if t == s and not used[i]) for s in chosen}
        take = min(left.values())
        for s in chosen:
            taken = 0
            for i, t in enumerate(tokens):
                if t == s and not used[i] and taken < take:
                    used[i] = True
                    taken += 1
        count += 1
    return count


@given(st.lists(st.integers(0, 5), max_size=8))
def test_count_ubatches_matches_llama_cpps_split(rows_by_slot: list[int]) -> None:
    assert count_ubatches(rows_by_slot) == brute_force_ubatches(rows_by_slot)


def test_step_cost_fit_recovers_the_terms_and_scales_to_measurements() -> None:
    per_ubatch, per_row = 0.003, 0.005
    samples = [(u, r, per_ubatch * u + per_row * r) for u, r in [(1, 1), (1, 8), (1, 32), (2, 9)]]
    cost = StepCost.fit(samples)
    assert cost.per_ubatch == pytest.approx(per_ubatch)
    assert cost.per_row == pytest.approx(per_row)
    for _ in range(200):  # the machine got twice as slow
        cost.observe((1, 4), 1, 4, 2 * (per_ubatch + 4 * per_row))
    assert cost.predict(1, 4) == pytest.approx(2 * (per_ubatch + 4 * per_row), rel=0.01)
    # Drafted steps take longer than the calibration says (a row costs 1.5x): drafts are
    # priced up, plain steps stay as they are.
    plain, drafted = cost.predict(1, 4), cost.predict(2, 12, base=(1, 4))
    for _ in range(200):
        cost.observe((1, 4), 2, 12, plain + 1.5 * (drafted - plain))
        cost.observe((1, 4), 1, 4, plain)
    assert cost.predict(1, 4) == pytest.approx(plain, rel=0.01)
    assert cost.predict(2, 12, base=(1, 4)) == pytest.approx(
        plain + 1.5 * (drafted - plain), rel=0.02
    )


def test_ngram_drafter_copies_what_followed_the_latest_match() -> None:
    drafter = NgramDrafter(ngram_min=2, ngram_max=3)
    drafter.add(1, [10, 11, 12, 13, 14, 10, 11])
    draft = drafter.propose({1: 3})[1]
    assert draft.tokens == [12, 13, 14] and draft.kind == "ngram2"
    drafter.extend(1, [12])  # now "10 11 12" matches: the longer n-gram wins
    assert drafter.propose({1: 8})[1].tokens == [13, 14, 10, 11, 12]
    assert drafter.propose({1: 8})[1].kind == "ngram3"
    drafter.add(2, [1, 2, 3])
    assert 2 not in drafter.propose({2: 4})  # nothing repeats yet
    drafter.remove(1)
    assert drafter.propose({1: 4}) == {}


# On the 2-core CPU this was built on: ~2.5 ms a ubatch, ~5.2 ms a row (measured).
CPU = StepCost(per_ubatch=0.0025, per_row=0.0052)
# A GPU-like cost: rows are nearly free until the batch is large.
GPU = StepCost(per_ubatch=0.008, per_row=0.00005)


def plan_for(cost: StepCost, n_decoding: int, acceptance: float) -> dict[int, int]:
    planner = Planner(cost)
    candidates = [Candidate(i, i, acceptance, 8) for i in range(n_decoding)]
    return planner.plan(candidates, n_decoding, [1] * n_decoding, 512)


def test_planner_drafts_alone_with_high_acceptance_and_stops_as_the_batch_fills() -> None:
    assert plan_for(CPU, 1, 0.95)  # a lone copying sequence drafts
    assert not plan_for(CPU, 1, 0.5)  # a poor guesser does not
    assert not plan_for(CPU, 8, 0.95)  # 8 sequences: a row is worth more as a decode
    assert not plan_for(CPU, 16, 0.95)
    # Where rows are almost free, drafting pays at any batch size, all sequences alike
    # (one remainder ubatch for all of them).
    plan = plan_for(GPU, 16, 0.8)
    assert len(plan) == 16 and len(set(plan.values())) == 1


def test_planner_learns_acceptance_per_sequence_and_kind() -> None:
    planner = Planner(CPU)
    for _ in range(30):
        planner.record(1, "ngram4", 6, 0)  # a sequence that copies
        planner.record(2, "ngram4", 0, 1)  # one whose guesses fail
    assert planner.acceptance(1, "ngram4") > 0.9
    assert planner.acceptance(2, "ngram4") < 0.2
    # A new sequence starts from what all sequences did with this kind of draft.
    assert planner.acceptance(2, "ngram4") < planner.acceptance(3, "ngram4") < 0.9
    assert planner.acceptance(3, "ngram2") == 0.5  # nothing known about this kind
    planner.forget(1)
    assert planner.acceptance(1, "ngram4") == planner.acceptance(3, "ngram4")


def test_non_adaptive_planner_drafts_everything_it_can() -> None:
    planner = Planner(CPU, adaptive=False)
    plan = planner.plan([Candidate(i, i, 0.1, 8) for i in range(4)], 4, [1] * 4, room=20)
    assert sum(plan.values()) == 20  # within the room the batch has left
