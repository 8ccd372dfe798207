"""The waiting queue, shared fairly between principals.

Order: higher priority first; within a priority, requests put back by the scheduler
(preempted, or running when the worker died) before new ones, then the principals take
turns (the one admitted least recently first), each in arrival order. So one API key with
64 requests waiting does not make everyone else wait behind all 64.

Capacity: `max_waiting` in all, and at most `max_per_principal` for any one principal;
requests put back never count against either (refusing them would lose a stream).

The queue holds at most a few hundred requests, so choosing the next one is a scan: no
index to keep in step with aborts and requeues.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    item: T
    principal: str
    priority: int
    order: int
    requeued: bool


@dataclass
class WaitingQueue(Generic[T]):
    max_waiting: int
    max_per_principal: int
    _entries: list[_Entry[T]] = field(default_factory=list)
    _arrivals: Iterator[int] = field(default_factory=itertools.count)
    _turns: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _last_turn: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[T]:
        return (entry.item for entry in self._entries)

    def refusal(self, principal: str, capped: bool = True) -> str | None:
        """Why a new request of `principal` cannot wait now (None: it can). `capped`:
        whether its share applies (not for the one principal of a server without auth)."""
        if len(self._entries) >= self.max_waiting:
            return f"{len(self._entries)} requests already waiting"
        if not capped:
            return None
        mine = sum(1 for e in self._entries if e.principal == principal and not e.requeued)
        if mine >= self.max_per_principal:
            return f"{principal} already has {mine} requests waiting (its share of the queue)"
        return None

    def push(self, item: T, principal: str, priority: int, requeued: bool = False) -> None:
        order = next(self._arrivals)
        # Requeued: back at the head of its turn, the latest put back first (it was the
        # newest of those running, so this restores arrival order among them).
        self._entries.append(_Entry(item, principal, priority, -order if requeued else order,
                                    requeued))  # fmt: skip

    def peek(self, skip: Callable[[T], bool] | None = None) -> T | None:
        """The request to admit next (passing over those `skip` holds back)."""
        entry = self._next(skip)
        return entry.item if entry is not None else None

    def pop(self, skip: Callable[[T], bool] | None = None) -> T | None:
        entry = self._next(skip)
        if entry is None:
            return None
        self._entries.remove(entry)
        self._last_turn[entry.principal] = next(self._turns)
        if len(self._last_turn) > 4 * self.max_waiting:  # forget principals long gone
            waiting = {e.principal for e in self._entries}
            self._last_turn = {p: t for p, t in self._last_turn.items() if p in waiting}
        return entry.item

    def remove(self, item: T) -> None:
        self._entries = [e for e in self._entries if e.item is not item]

    def clear(self) -> list[T]:
        items = [e.item for e in self._entries]
        self._entries.clear()
        return items

    def _next(self, skip: Callable[[T], bool] | None = None) -> _Entry[T] | None:
        entries = [e for e in self._entries if not skip(e.item)] if skip else self._entries
        if not entries:
            return None
        return min(
            entries,
            key=lambda e: (
                -e.priority,
                not e.requeued,
                0 if e.requeued else self._last_turn.get(e.principal, 0),
                e.order,
            ),
        )
