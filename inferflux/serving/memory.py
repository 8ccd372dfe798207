"""How much memory a model takes once loaded, and how much the machine has free.

Weights: the GGUF file's size (llama.cpp maps it: a model's workers share one copy in
the page cache). KV cache: every slot of every worker holds ctx_size
cells of layers x 2 (K and V) x kv_heads x head_dim x 2 bytes (f16), read from the GGUF
header; for the default model that is ~23 KB a token. The estimate leaves out llama.cpp's
compute buffers (tens of MB), hence a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model.gguf import read_metadata

MARGIN_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Footprint:
    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + MARGIN_BYTES


def kv_bytes_per_token(meta: dict) -> int:
    arch = meta.get("general.architecture", "")
    layers = int(meta.get(f"{arch}.block_count", 0))
    heads = int(meta.get(f"{arch}.attention.head_count", 0)) or 1
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    width = int(meta.get(f"{arch}.embedding_length", 0))
    key_length = int(meta.get(f"{arch}.attention.key_length", width // heads if heads else 0))
    value_length = int(meta.get(f"{arch}.attention.value_length", key_length))
    return layers * kv_heads * (key_length + value_length) * 2


def footprint(path: str | Path, n_slots: int, ctx_size: int) -> Footprint:
    meta = read_metadata(path)
    return Footprint(Path(path).stat().st_size, kv_bytes_per_token(meta) * n_slots * ctx_size)


def available_bytes() -> int:
    """MemAvailable: what can be had without swapping."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
