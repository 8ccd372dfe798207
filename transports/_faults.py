"""Fault injection for channels (the chaos harness's nemesis; off unless asked for).

A `Faults` plan set on a channel drops, duplicates or delays whole messages, in both
directions, *below* the channel's sequence numbers: the receiving side must notice (a
duplicate is discarded, a gap breaks the link), exactly as it would for a real fault.
Delays keep message order (nng preserves it, and so do we).
"""

from __future__ import annotations

import random

import msgspec


class Faults(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    drop: float = 0.0  # probability a message vanishes
    duplicate: float = 0.0  # probability a message arrives twice
    delay: float = 0.0  # probability a message is held back for delay_s
    delay_s: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop", "duplicate", "delay"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"faults.{name} must be a probability in [0, 1], got {value}")
        if self.delay_s < 0:
            raise ValueError(f"faults.delay_s must be >= 0, got {self.delay_s}")

    @property
    def active(self) -> bool:
        return bool(self.drop or self.duplicate or self.delay)


class FaultInjector:
    """Decides, message by message, what a `Faults` plan does to it (seeded, repeatable)."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self.dropped = self.duplicated = self.delayed = 0

    def copies(self) -> int:
        """How many times the next message is delivered: 0 (dropped), 1, or 2."""
        if self._random.random() < self.faults.drop:
            self.dropped += 1
            return 0
        if self._random.random() < self.faults.duplicate:
            self.duplicated += 1
            return 2
        return 1

    def delay_s(self) -> float:
        if self._random.random() < self.faults.delay:
            self.delayed += 1
            return self.faults.delay_s
        return 0.0
