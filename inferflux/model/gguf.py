"""Read a GGUF file's metadata (the key/value header), without llama.cpp.

Why not `llama_model_load_from_file(vocab_only=True)`: it cannot open an mmproj (CLIP)
file, it loads the whole vocabulary into C structures we would throw away, and the CLI
that lists models should not need llama.cpp at all. The header is simple: magic, version,
counts, then `kv_count` typed values; this reader keeps scalars and strings and skips
arrays (the vocabulary: 49k strings for SmolLM2, 262k for Gemma 3, skipped in ~0.1 s over
an mmap). Tensor data is never read.

Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3,
little-endian).
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

MAGIC = b"GGUF"

# GGUF value types -> struct format of one scalar (8: string, 9: array are special).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS |= {11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """Not a GGUF file, or a damaged header."""


def is_gguf(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The header's key/value pairs: scalars and strings as Python values, arrays as their
    length (an int) under the key, since nothing here needs their items."""
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise GGUFError(f"{path} is not a GGUF file (it does not start with b'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            try:
                return _Reader(view).header()
            except (struct.error, IndexError, UnicodeDecodeError) as exc:
                raise GGUFError(f"{path}: damaged GGUF header ({exc})") from None


class _Reader:
    def __init__(self, view: mmap.mmap) -> None:
        self.view = view
        self.at = 4

    def header(self) -> dict[str, Any]:
        version = self.unpack("<I")
        if version not in (2, 3):
            raise GGUFError(f"GGUF version {version} is not supported (2 and 3 are)")
        _tensor_count, kv_count = self.unpack("<Q"), self.unpack("<Q")
        meta: dict[str, Any] = {}
        for _ in range(kv_count):
            key = self.string()
            meta[key] = self.value(self.unpack("<I"))
        return meta

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.view, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.at + n > len(self.view):
            raise GGUFError("string runs past the end of the file")
        text = self.view[self.at : self.at + n].decode("utf-8")
        self.at += n
        return text

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            self.skip_array(item_kind, count)
            return count
        raise GGUFError(f"unknown GGUF value type {kind} at byte {self.at}")

    def skip_array(self, kind: int, count: int) -> None:
        if kind in _SCALARS:
            self.at += struct.calcsize(_SCALARS[kind]) * count
        elif kind == _STRING:
            for _ in range(count):
                self.at += 8 + struct.unpack_from("<Q", self.view, self.at)[0]
        else:  # arrays of arrays: rare, but legal
            for _ in range(count):
                self.value(kind)
        if self.at > len(self.view):
            raise GGUFError("array runs past the end of the file")
