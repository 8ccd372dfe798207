"""KV cache accounting: who owns each slot, what each slot's cells hold, what to reuse.

The worker's llama.cpp context has one KV stream of cells_per_slot cells per slot;
admission caps every sequence at cells_per_slot (prompt + max_tokens), so a stream cannot
run out. A prefix reused from another slot is copied between streams.
A slot (a llama.cpp sequence id) is
  free     holds nothing useful,
  running  owned by a sequence being generated,
  cached   holds a finished sequence's tokens, kept for prefix reuse until evicted (LRU).
The manager decides; it never calls llama.cpp. The scheduler turns its `Placement` into an
Admit message, and the worker executes it in order with every other message, so this
bookkeeping and the worker's cells never disagree.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from .radix import RadixTree

SlotState = Literal["free", "running", "cached"]


@dataclass(frozen=True)
class Placement:
    slot: int
    n_cached: int  # prompt tokens whose KV is already there (after the copy, if any)
    copy_from: int = -1
    # Prompt tokens looked up in the prefix cache (0 with it off): with n_cached, what this
    # placement adds to the hit-rate counts. Bookkeeping, not part of the decision.
    n_queried: int = field(default=0, compare=False)


@dataclass
class KVStats:
    slots: int
    running: int
    cached: int
    cells_per_slot: int
    cells_used: int
    # The prefix cache's hit rate is prefix_hit_tokens / prefix_query_tokens: prompt tokens
    # looked up (none while it is off), and of those, reused from KV instead of prefilled.
    # The scheduler's metrics add up the same per-placement numbers.
    prefix_query_tokens: int
    prefix_hit_tokens: int

    @property
    def usage(self) -> float:
        return self.cells_used / max(1, self.slots * self.cells_per_slot)


class KVCacheManager:
    def __init__(
        self,
        n_slots: int,
        cells_per_slot: int,
        *,
        prefix_cache: bool = True,
        min_reuse_tokens: int = 1,
    ) -> None:
        self.n_slots = n_slots
        self.cells_per_slot = cells_per_slot
        self.prefix_cache = prefix_cache
        self.min_reuse_tokens = min_reuse_tokens
        self.state: list[SlotState] = ["free"] * n_slots
        self.cells: list[int] = [0] * n_slots  # tokens whose KV the slot holds
        self._last_used = [0] * n_slots
        self._clock = itertools.count(1)
        self.tree = RadixTree()
        self.prefix_query_tokens = self.prefix_hit_tokens = 0

    # questions -------------------------------------------------------------------------
    def can_place(self) -> bool:
        return any(s != "running" for s in self.state)

    @property
    def running(self) -> int:
        return self.state.count("running")

    def stats(self) -> KVStats:
        return KVStats(
            self.n_slots,
            self.running,
            self.state.count("cached"),
            self.cells_per_slot,
            sum(self.cells),
            self.prefix_query_tokens,
            self.prefix_hit_tokens,
        )

    def cached_prefix(self, prompt: list[int]) -> int:
        """Prompt tokens a placement here would reuse (no decision taken)."""
        return self._match(prompt)[0]

    def _match(self, prompt: list[int]) -> tuple[int, set[int]]:
        """The reusable prefix of `prompt` and the slots holding it."""
        if not self.prefix_cache:
            return 0, set()
        length, holders = self.tree.longest_match(prompt)
        # The last prompt token is always computed: its logits give the first new token.
        length = min(length, len(prompt) - 1)
        if length < self.min_reuse_tokens:
            return 0, set()
        return length, holders

    # decisions -------------------------------------------------------------------------
    def place(self, prompt: list[int]) -> Placement | None:
        """Choose a slot for a new sequence and what of `prompt` it can reuse; commit it.

        Preference: a cached slot that holds the longest prefix (no copy at all), else a
        free or least recently used cached slot, with the prefix copied from whichever
        slot holds it (running ones too).
        """
        if not self.can_place():
            return None
        length, holders = self._match(prompt)
        queried = len(prompt) if self.prefix_cache else 0
        cached_holders = [s for s in holders if self.state[s] == "cached"]
        if cached_holders:
            slot = max(cached_holders, key=lambda s: self._last_used[s])
            placement = Placement(slot, length, n_queried=queried)
        else:
            slot = self._victim()
            if holders:
                placement = Placement(slot, length, copy_from=min(holders), n_queried=queried)
            else:
                placement = Placement(slot, 0, n_queried=queried)
        self.prefix_query_tokens += placement.n_queried
        self.prefix_hit_tokens += placement.n_cached
        # From now on the slot holds prompt[:n_cached] (the worker executes the Admit before
        # anything later): a request arriving next can already reuse that part.
        if placement.n_cached and self.prefix_cache:
            self.tree.insert(slot, prompt[: placement.n_cached])
        else:
            self.tree.remove(slot)
        self.state[slot] = "running"
        self.cells[slot] = placement.n_cached
        self._last_used[slot] = next(self._clock)
        return placement

    def _victim(self) -> int:
        free = [s for s, state in enumerate(self.state) if state == "free"]
        if free:
            return free[0]
        cached = [s for s, state in enumerate(self.state) if state == "cached"]
        return min(cached, key=lambda s: self._last_used[s])  # LRU eviction

    def unadvertise(self, slot: int) -> None:
        """The running slot's cells are not what `place` said, until later (a prefill node
        computes its prompt): nobody may reuse them meanwhile."""
        self.tree.remove(slot)
        self.cells[slot] = 0

    # events from the worker ---------------------------------------------------------
    def prompt_resident(self, slot: int, prompt: list[int]) -> None:
        """The whole prompt of the sequence in `slot` is now in KV: others may reuse it."""
        self.cells[slot] = len(prompt)
        if self.prefix_cache:
            self.tree.insert(slot, prompt)

    def grew(self, slot: int, kv_tokens: int) -> None:
        self.cells[slot] = kv_tokens

    def release(self, slot: int, kv_tokens: list[int] | None) -> None:
        """The sequence in `slot` ended. Keep its cells for reuse (cached) when its tokens
        are known and the prefix cache is on, else mark the slot free."""
        self._last_used[slot] = next(self._clock)
        if kv_tokens and self.prefix_cache:
            self.state[slot] = "cached"
            self.cells[slot] = len(kv_tokens)
            self.tree.insert(slot, kv_tokens)
        else:
            self.state[slot] = "free"
            self.cells[slot] = 0
            self.tree.remove(slot)

    def reset(self) -> None:
        """The worker restarted with an empty KV cache."""
        self.state = ["free"] * self.n_slots
        self.cells = [0] * self.n_slots
        for slot in self.tree.slots:
            self.tree.remove(slot)
