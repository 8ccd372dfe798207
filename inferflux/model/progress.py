"""What a pull prints while it works: a redrawn bar on a terminal, plain lines elsewhere.

On a TTY one line is redrawn at most 10 times a second (`\\r`); in a log or a pipe a line
is printed at every 10% so the output stays short and greppable. Everything goes to
stderr: stdout carries only the result (the model's name), for scripts.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out or sys.stderr
        self.quiet = quiet
        self.tty = self.out.isatty()
        self.label, self.total, self.done, self.initial = "", 0, 0, 0
        self._started = self._drawn_at = 0.0
        self._next_step = 0
        self._steps = True

    def note(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def start(self, label: str, total: int | None, initial: int = 0, steps: bool = True) -> None:
        """A new bar. steps=False: in plain output, one line at the end instead of one per
        10% (for local work that takes a second: hashing, not transfers)."""
        self.label, self.total, self.done, self.initial = label, total or 0, initial, initial
        self._started = time.monotonic()
        self._steps = steps
        self._next_step = 10 * (initial * 10 // self.total) + 10 if self.total and steps else 101
        if initial and not self.quiet:
            self.note(f"  {label}: resuming at {human(initial)} of {human(self.total)}")
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def finish(self) -> None:
        self._draw(force=True)
        if self.tty and not self.quiet:
            self.out.write("\n")
            self.out.flush()
        elif not self.quiet and (not self._steps or self._next_step <= 100):
            self.note(f"  {self.label}: {human(self.done)} done")

    def _draw(self, force: bool = False) -> None:
        if self.quiet:
            return
        percent = 100 * self.done // self.total if self.total else 0
        if not self.tty:
            if self.total and percent >= self._next_step:
                self.note(f"  {self.label}: {percent}% ({human(self.done)} of {human(self.total)})")
                self._next_step = 10 * (percent // 10) + 10
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        rate = (self.done - self.initial) / max(now - self._started, 1e-3)
        width = 30
        filled = width * self.done // self.total if self.total else 0
        bar = "#" * filled + "-" * (width - filled)
        size = f"{human(self.done)}/{human(self.total)}" if self.total else human(self.done)
        # \x1b[K clears what a longer previous line left at the end.
        line = f"\r  {self.label[:40]:40} [{bar}] {percent:3d}% {size} {human(rate)}/s\x1b[K"
        self.out.write(line)
        self.out.flush()

    def tqdm_class(self) -> type:
        """A stand-in for tqdm that huggingface_hub's downloader can drive (it calls
        `cls(total=, initial=, desc=, ...)`, uses it as a context manager, and `update`)."""
        progress = self

        class Bar:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = kwargs.get("initial") or 0
                label = progress.label or str(kwargs.get("desc", ""))
                progress.start(label, kwargs.get("total"), initial=self.n)

            def update(self, n: int = 1) -> None:
                self.n += n
                progress.advance(n)

            def close(self) -> None:
                progress.finish()

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return Bar


def copy_hashing(src: BinaryIO, dst: BinaryIO, digest: Any, progress: Progress) -> int:
    """Copy src to dst in 1 MiB blocks, feeding `digest` and the progress bar."""
    copied = 0
    while block := src.read(1 << 20):
        dst.write(block)
        digest.update(block)
        copied += len(block)
        progress.advance(len(block))
    return copied


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            if progress:
                progress.advance(len(block))
    return digest.hexdigest()
