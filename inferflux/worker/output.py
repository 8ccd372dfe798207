"""Per-sequence text output: incremental UTF-8 detokenization and stop strings.

A byte-level BPE token can end in the middle of a UTF-8 character; the incremental decoder
keeps those bytes until the character is complete, so a streamed delta never carries a
broken character. Stop strings are matched on text: any tail that could still become a
stop string is held back, so the stop string never reaches the client, even when it spans
several tokens.
"""

from __future__ import annotations

import codecs


class TextOutput:
    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stop:
            self._held = ""
            return text
        cut = self._find_stop(text)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_length(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The end of the sequence: whatever was held back is final text."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _find_stop(self, text: str) -> int:
        found = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        return min(found) if found else -1

    def _partial_stop_length(self, text: str) -> int:
        """Longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
