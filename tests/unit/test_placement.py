"""Cache-aware placement across a node's device workers (kvcache/placement.py)."""

from __future__ import annotations

from inferflux.kvcache.placement import NodeKV

PROMPT = list(range(100, 140))


def attached(n: int, **kwargs: int) -> NodeKV:
    kv = NodeKV(n, n_slots=4, cells_per_slot=512, **kwargs)
    for worker in range(n):
        kv.attach(worker)
    return kv


def finish(kv: NodeKV, worker: int, slot: int, tokens: list[int]) -> None:
    kv[worker].prompt_resident(slot, tokens)
    kv[worker].release(slot, tokens)


def test_a_prompt_goes_where_its_prefix_is_cached() -> None:
    kv = attached(3)
    first = kv.place(PROMPT)
    assert first is not None and first.worker == 0 and first.placement.n_cached == 0
    finish(kv, 0, first.placement.slot, PROMPT)
    fresh = kv.place([7] * 20)  # nothing cached anywhere: the least loaded worker
    assert fresh is not None and fresh.worker == 0  # all idle: the first
    again = kv.place(PROMPT[:30] + [1, 2, 3])
    assert again is not None and again.worker == 0 and again.placement.n_cached == 30


def test_fresh_prompts_spread_by_load() -> None:
    kv = attached(2)
    placed = [kv.place([i] * 10) for i in range(4)]
    assert [p.worker for p in placed if p] == [0, 1, 0, 1]
    assert kv.running == 4


def test_a_cached_prefix_does_not_pile_everything_on_one_worker() -> None:
    """Worker 0 holds the shared prefix; it gets the requests until it runs more than
    balance_slack sequences beyond worker 1, which then gets the next one (prefilled
    there from nothing)."""
    kv = attached(2, balance_slack=1)
    shared = kv.place(PROMPT)
    assert shared is not None
    finish(kv, 0, shared.placement.slot, PROMPT)
    workers = []
    for i in range(4):
        placed = kv.place(PROMPT + [i])
        assert placed is not None
        workers.append((placed.worker, placed.placement.n_cached))
    assert workers == [(0, 40), (0, 40), (1, 0), (0, 40)]


def test_a_detached_worker_takes_nothing_and_comes_back_empty() -> None:
    kv = attached(2)
    shared = kv.place(PROMPT)
    assert shared is not None and shared.worker == 0
    finish(kv, 0, shared.placement.slot, PROMPT)
    kv.detach(0)  # crashed: its cells are gone
    moved = kv.place(PROMPT)
    assert moved is not None and moved.worker == 1 and moved.placement.n_cached == 0
    kv.attach(0)
    assert kv[0].cached_prefix(PROMPT) == 0 and kv.any_attached


def test_no_room_anywhere_is_none() -> None:
    kv = attached(2)
    for i in range(8):
        assert kv.place([i] * 5) is not None
    assert kv.place([99] * 5) is None
    kv.detach(0)
    kv.detach(1)
    assert kv.place([99] * 5) is None and not kv.any_attached
    assert kv.stats().running == 0 and kv.stats().slots == 8
