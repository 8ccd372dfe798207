"""One codec per socket: msgspec MessagePack over a tagged union of Structs.

Encoder and decoder are built once per codec (msgspec compiles a decoder for the type on
construction) and reused for every message. A message that fails to decode raises
MessageDecodeError for that message only; the caller keeps the channel and reads on.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

M = TypeVar("M")


class MessageDecodeError(ValueError):
    """Bytes from a peer that are not a valid message of the expected union."""

    def __init__(self, peer: str, tag: object, detail: str, size: int) -> None:
        self.peer, self.tag, self.detail, self.size = peer, tag, detail, size
        super().__init__(f"bad message from {peer or 'peer'} ({size} bytes, tag {tag!r}): {detail}")


class Codec(Generic[M]):
    """Encode/decode one message type (normally a Union of tagged Structs)."""

    def __init__(self, message_type: Any) -> None:
        self.message_type = message_type
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[M] = msgspec.msgpack.Decoder(message_type)

    def encode(self, message: M) -> bytes:
        return self._encoder.encode(message)

    def decode(self, data: bytes | memoryview, peer: str = "") -> M:
        try:
            return self._decoder.decode(data)
        # msgspec raises DecodeError/ValidationError, and UnicodeDecodeError for invalid
        # UTF-8 in a str (found by the property test): all mean "bad message".
        except (msgspec.DecodeError, ValueError) as exc:
            raise MessageDecodeError(peer, _guess_tag(data), str(exc), len(data)) from None


def _guess_tag(data: bytes | memoryview) -> object:
    """Best-effort tag of an undecodable message, so errors can name what arrived."""
    try:
        raw = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, ValueError):
        return None
    if isinstance(raw, list) and raw:
        return raw[0]
    if isinstance(raw, dict):
        return raw.get("type")
    return None
