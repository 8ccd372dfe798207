"""Frames between a process actor's proxy (parent) and its child process.

Payloads stay msgspec.Raw here: the link does not know the actor's message types, the two
ends decode them with the actor class's own `message_type` / `reply_type` unions.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal, Union

import msgspec

from transports import Codec


class Hello(msgspec.Struct, tag=True, frozen=True, array_like=True):
    pid: int


class Cast(msgspec.Struct, tag=True, frozen=True, array_like=True):
    payload: msgspec.Raw


class Call(msgspec.Struct, tag=True, frozen=True, array_like=True):
    correlation_id: int
    payload: msgspec.Raw
    stream: bool = False


class Item(msgspec.Struct, tag=True, frozen=True, array_like=True, gc=False):
    correlation_id: int
    payload: msgspec.Raw


class Done(msgspec.Struct, tag=True, frozen=True, array_like=True, gc=False):
    correlation_id: int
    payload: msgspec.Raw


class Fail(msgspec.Struct, tag=True, frozen=True, array_like=True):
    correlation_id: int
    kind: str
    message: str


class Refused(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """A refusal (actors.Rejected): its error Struct, in the actor's `error_type`."""

    correlation_id: int
    payload: msgspec.Raw


class Stop(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Graceful stop: finish queued messages, run `stopping()`, exit 0."""


class InjectCrash(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """Chaos: raise InjectedCrash inside the child's actor, as a bug there would."""


class Ask(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """The child asks an actor of its parent's registry (actors/_imports.py); the same
    fields as a node link's Ask, so the parent serves it as a node serves a peer. The
    answers come back as Item / Done / Fail / Refused frames with its correlation id."""

    correlation_id: int
    target: str
    payload: msgspec.Raw
    kind: Literal["cast", "call", "stream"]


class Details(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """The child actor's `details()`, sent when they change (at most every
    DETAILS_EVERY_S), so the parent's introspection shows them (and its readiness)."""

    values: dict[str, float | int | str]


DETAILS_EVERY_S = 0.25

Frame = Union[Hello, Cast, Call, Item, Done, Fail, Refused, Stop, InjectCrash, Ask, Details]
frame_codec: Codec[Frame] = Codec(Frame)


def import_target(target: str) -> Any:
    """'package.module:Name' -> the object; a clear error for a bad spec."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"process actor target must look like 'pkg.module:Class', got {target!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (target {target!r})") from None


class PayloadCodecs:
    """An actor class's protocol as codecs: its `message_type`, `reply_type` (stream items
    and terminal replies) and `error_type` (what it refuses with, as actors.Rejected)."""

    def __init__(self, actor_class: Any) -> None:
        message_type = getattr(actor_class, "message_type", None)
        reply_type = getattr(actor_class, "reply_type", None)
        error_type = getattr(actor_class, "error_type", None)
        if message_type is None:
            raise TypeError(f"{actor_class!r} needs a `message_type` to run in a process")
        self.messages: Codec[Any] = Codec(message_type)
        self.replies: Codec[Any] = Codec(Any if reply_type is None else reply_type | None)
        self.errors: Codec[Any] | None = Codec(error_type) if error_type is not None else None

    @classmethod
    def of(cls, actor_class: Any) -> PayloadCodecs | None:
        """The codecs of a class that declares a protocol; None for one that does not."""
        return cls(actor_class) if getattr(actor_class, "message_type", None) else None
