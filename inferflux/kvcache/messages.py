"""The `kvcache` actor's protocol (kvcache/actor.py): a decode node's scheduler asks its
own kvcache to bring a prefill node's KV state here (FetchKV); the decode node's kvcache
pulls it in chunks from the prefill node's (PullKV, KVChunk); whoever is done with a
staging file lets it go (ReleaseKV). All msgspec Structs, the same on every link."""

from __future__ import annotations

from typing import Union

import msgspec

from ..messages import KVState


class FetchKV(msgspec.Struct, tag=True, frozen=True):
    """Make `state` (a prefill node's, held by the kvcache actor named `holder` in this
    registry) loadable by this node's worker: answered with Fetched, or refused with
    TransferFailed. The prefill node's file is released once brought here."""

    holder: str
    state: KVState


class Fetched(msgspec.Struct, tag=True, frozen=True):
    """The state as this node's worker loads it (the same file on one host, else a copy
    pulled here; release it with ReleaseKV to this kvcache), and the seconds it took."""

    state: KVState
    seconds: float
    pulled: bool


class PullKV(msgspec.Struct, tag=True, frozen=True):
    """`length` bytes from `offset` of the staging file `name`: answered with KVChunk."""

    name: str
    offset: int
    length: int


class KVChunk(msgspec.Struct, tag=True, frozen=True):
    data: bytes
    crc32: int  # zlib.crc32 of data, checked by the receiver


class ReleaseKV(msgspec.Struct, tag=True, frozen=True):
    """The staging file `name` is no longer needed: remove it (its lease ends)."""

    name: str


class TransferFailed(msgspec.Struct, tag=True, frozen=True):
    """A state that cannot be brought here (gone, corrupted, too slow, no room): the
    decode node prefills the prompt itself."""

    message: str


KVCacheMessage = Union[FetchKV, PullKV, ReleaseKV]
KVCacheReply = Union[Fetched, KVChunk]


def holder_name(peer: str) -> str:
    """The name a decode node gives the kvcache of the prefill node it imported as
    `peer` (serving/cluster.py imports both)."""
    return f"kvcache@{peer}"
