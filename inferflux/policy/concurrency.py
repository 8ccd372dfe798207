"""Generations running per principal, for `max_concurrent` (policy/records.py).

A generation is counted when the policy admits it (`Authorize`: one per choice, so n=4
counts 4) and given back when it ends (`Settle`, sent when its audit ticket closes),
both by its seq_id, so a release is exact and idempotent: a Settle for a generation this
actor never counted (one admitted before a restart) releases nothing.

One gap needs care: an admission whose answer nobody heard (the caller timed out or was
cancelled while the policy decided) would hold its count forever, and a key with
max_concurrent 1 would be locked out until a restart. The ingress then sends an
`abandoned` Settle for that seq_id: it releases the count if it was taken, or, if the
decision is still under way, marks the seq_id so that the decision does not take one
(`take` checks). The marks are bounded (`MAX_ABANDONED`, oldest dropped first).

All of it is memory: a restarted policy actor counts from zero, so until the generations
admitted before the restart end, a principal may run up to twice its limit.
"""

from __future__ import annotations

MAX_ABANDONED = 4096
MAX_HELD = 100_000  # a last resort against Settles that never come: oldest released first


class Concurrency:
    def __init__(self) -> None:
        self._held: dict[int, tuple[str, int]] = {}  # seq_id -> (principal, generations)
        self._running: dict[str, int] = {}
        self._abandoned: dict[int, None] = {}  # insertion-ordered set

    def running(self, principal: str) -> int:
        return self._running.get(principal, 0)

    def take(self, seq_id: int, principal: str, generations: int) -> bool:
        """Count `generations` for `principal` under `seq_id`; False (nothing counted)
        when the ingress already gave this admission up."""
        if seq_id in self._abandoned:
            del self._abandoned[seq_id]
            return False
        if seq_id in self._held:
            return True  # the same admission twice (a retry): counted once
        if len(self._held) >= MAX_HELD:
            self.release(next(iter(self._held)))
        self._held[seq_id] = (principal, generations)
        self._running[principal] = self.running(principal) + generations
        return True

    def release(self, seq_id: int) -> None:
        held = self._held.pop(seq_id, None)
        if held is None:
            return
        principal, generations = held
        left = self.running(principal) - generations
        if left > 0:
            self._running[principal] = left
        else:
            self._running.pop(principal, None)

    def abandon(self, seq_id: int) -> None:
        """The ingress never heard this admission's answer: release it, or make sure it
        is never counted."""
        if seq_id in self._held:
            self.release(seq_id)
            return
        if len(self._abandoned) >= MAX_ABANDONED:
            del self._abandoned[next(iter(self._abandoned))]
        self._abandoned[seq_id] = None
