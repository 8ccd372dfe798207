"""A pull that reports its progress as events instead of printing it: for the admin API's
pull endpoint, which streams them to the client as JSON lines.

The pull runs in a worker thread (it blocks on the network and the disk); each event
crosses to Trio through a bounded channel. A client that stops reading closes the
channel, and the pull stops at its next event (what it fetched stays for a resumed
pull), as `inferflux pull` does on ^C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .progress import Progress

Event = dict[str, Any]

EVENT_EVERY_S = 0.25
"""At most this often a "downloading" event for one file (the last one always comes)."""


class EventProgress(Progress):
    """The Progress a pull drives, turned into events handed to `emit` (which may raise
    to stop the pull)."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        super().__init__(quiet=True)
        self.emit = emit
        self._sent_at = 0.0

    def note(self, text: str) -> None:
        self.emit({"status": text.strip()})

    def start(self, label: str, total: int | None, initial: int = 0, steps: bool = True) -> None:
        super().start(label, total, initial, steps)
        self._sent_at = 0.0
        self._send(force=True)

    def advance(self, n: int) -> None:
        super().advance(n)
        self._send()

    def finish(self) -> None:
        super().finish()
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._sent_at >= EVENT_EVERY_S:
            self._sent_at = now
            event: Event = {"status": "downloading", "file": self.label, "completed": self.done}
            if self.total:
                event["total"] = self.total
            self.emit(event)
