"""What crosses a node link: its frames, and how an error becomes a frame and back.

Payloads stay msgspec.Raw: the link does not know the actors' types; each end decodes
them with the target actor's protocol (PayloadCodecs). A caller gets the error type it
would get from a local actor: a refusal its Struct (Rejected), a crash ActorCrashed, the
runtime's own errors their kind.
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec
import trio

from transports import Channel, ChannelClosed, Codec, MessageDecodeError

from ._errors import ActorCrashed, ActorUnavailable, Rejected, RemoteError
from ._link import Done, Fail, Item, PayloadCodecs, Refused
from ._monitor import ActorState, Watch


class Hello(msgspec.Struct, tag="NodeHello", frozen=True, array_like=True):
    node: str
    epoch: int


class Ask(msgspec.Struct, tag=True, frozen=True, array_like=True):
    correlation_id: int
    target: str
    payload: msgspec.Raw
    kind: Literal["cast", "call", "stream"]


class Beat(msgspec.Struct, tag=True, frozen=True, array_like=True):
    """I am alive. `stamp`: the sender's clock (monotonic s); `echo`: the last stamp it
    heard from us, `held_s` after hearing it (0: none yet), so that we can tell the round
    trip with our own clock alone: now - echo - held_s."""

    stamp: float = 0.0
    echo: float = 0.0
    held_s: float = 0.0


NodeFrame = Union[Hello, Ask, Item, Done, Fail, Refused, Beat, Watch, ActorState]
node_codec: Codec[NodeFrame] = Codec(NodeFrame)


async def send_frame(
    channel: Channel[Any], frame: NodeFrame, timeout_s: float | None = None
) -> None:
    """`channel.send`, where a send that was waiting for room when the channel was closed
    under it (a rejoin replaced it: NodeLink.replace_channel) raises ChannelClosed, like
    any other send on a closed channel, rather than Trio's ClosedResourceError."""
    try:
        await channel.send(frame, timeout_s=timeout_s)
    except trio.ClosedResourceError:
        raise ChannelClosed(str(channel.address)) from None


def fail_frame(cid: int, error: BaseException, protocol: PayloadCodecs | None) -> Fail | Refused:
    """The frame for `error`: a refusal carries its Struct, runtime errors their type."""
    if isinstance(error, Rejected) and protocol is not None and protocol.errors is not None:
        return Refused(cid, msgspec.Raw(protocol.errors.encode(error.error)))
    if isinstance(error, RemoteError):
        return Fail(cid, error.kind, error.remote_message)
    if isinstance(error, ActorCrashed):
        return Fail(cid, "ActorCrashed", error.cause)
    return Fail(cid, type(error).__name__, str(error))


def failure(actor: str, kind: str, message: str) -> BaseException:
    """The exception a Fail frame stands for, of the type a local caller would get."""
    if kind == "ActorCrashed":
        return ActorCrashed(actor, message)
    if kind in ("ActorUnavailable", "NodeDown"):
        return ActorUnavailable(actor, message)
    return RemoteError(actor, kind, message)


def refusal(protocol: PayloadCodecs, actor: str, payload: msgspec.Raw) -> BaseException:
    """A Refused frame's Rejected, with the actor's own error Struct."""
    assert protocol.errors is not None, "a refusal from an actor without an error_type"
    try:
        return Rejected(actor, protocol.errors.decode(payload))
    except MessageDecodeError as exc:
        return RemoteError(actor, "BadRefusal", str(exc))
