"""Which device worker a sequence goes to, on a node with several (`--workers N`).

Each worker has its own llama.cpp context: its own slots and prefix cache, kept by a
KVCacheManager each. A request goes to the worker whose cache holds the longest prefix
of its prompt (its prefill is shortest there), unless that worker already runs more than
`balance_slack` sequences beyond the least loaded one: then, and when no worker holds any
of it, to the least loaded worker. This is SGLang's cache-aware routing with an absolute
balance threshold, counted in running sequences (a worker's batch is what slows its
steps). Workers that are not attached (starting, restarting) take nothing.

One worker (the default) is the plain KVCacheManager decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from .manager import KVCacheManager, KVStats, Placement

BALANCE_SLACK = 2


@dataclass(frozen=True)
class NodePlacement:
    worker: int
    placement: Placement


class NodeKV:
    def __init__(
        self,
        n_workers: int,
        n_slots: int,
        cells_per_slot: int,
        *,
        prefix_cache: bool = True,
        balance_slack: int = BALANCE_SLACK,
    ) -> None:
        self.workers = [
            KVCacheManager(n_slots, cells_per_slot, prefix_cache=prefix_cache)
            for _ in range(n_workers)
        ]
        self.attached = [False] * n_workers
        self.balance_slack = balance_slack

    def __getitem__(self, worker: int) -> KVCacheManager:
        return self.workers[worker]

    @property
    def any_attached(self) -> bool:
        return any(self.attached)

    @property
    def running(self) -> int:
        return sum(kv.running for kv in self.workers)

    def attach(self, worker: int) -> None:
        """The worker is ready, its KV cache empty (a fresh start or a restart)."""
        self.workers[worker].reset()
        self.attached[worker] = True

    def detach(self, worker: int) -> None:
        """The worker is gone: its cells with it."""
        self.workers[worker].reset()
        self.attached[worker] = False

    def place(self, prompt: list[int]) -> NodePlacement | None:
        """Choose a worker and a slot there (module docstring); commit it. None when no
        attached worker has a slot to give."""
        open_workers = [
            w for w, kv in enumerate(self.workers) if self.attached[w] and kv.can_place()
        ]
        if not open_workers:
            return None
        chosen = open_workers[0]
        if len(open_workers) > 1:
            load = {w: self.workers[w].running for w in open_workers}
            reuse = {w: self.workers[w].cached_prefix(prompt) for w in open_workers}
            least = min(open_workers, key=lambda w: load[w])
            best = max(open_workers, key=lambda w: (reuse[w], -load[w]))
            balanced = load[best] - load[least] <= self.balance_slack
            chosen = best if reuse[best] and balanced else least
        placement = self.workers[chosen].place(prompt)
        assert placement is not None  # can_place said so
        return NodePlacement(chosen, placement)

    def stats(self) -> KVStats:
        """All workers together."""
        each = [kv.stats() for kv in self.workers]
        return KVStats(
            sum(s.slots for s in each),
            sum(s.running for s in each),
            sum(s.cached for s in each),
            each[0].cells_per_slot,
            sum(s.cells_used for s in each),
            sum(s.prefix_query_tokens for s in each),
            sum(s.prefix_hit_tokens for s in each),
        )
