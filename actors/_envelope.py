"""What travels through a local mailbox: a message plus, for calls and streams, a reply port.

Every request gets a correlation id so replies can be matched across a process link and so
logs of both sides can be joined.
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import trio

from ._errors import ActorCrashed, Rejected, RemoteError

Kind = Literal["cast", "call", "stream"]
_next_correlation = itertools.count(1)

# Reply channel items: ("item", value) for stream items, ("done", value) terminal,
# ("error", exception) terminal.
ReplyItem = tuple[str, Any]


class Envelope:
    """One delivery. `reply()`/`send()`/`fail()` answer the sender; casts ignore them."""

    __slots__ = (
        "message", "kind", "correlation_id", "_port", "answered", "trace_id", "deferred", "wire",
    )  # fmt: skip

    def __init__(
        self,
        message: Any,
        kind: Kind = "cast",
        port: trio.MemorySendChannel[ReplyItem] | None = None,
        correlation_id: int | None = None,
        trace_id: str = "",
    ) -> None:
        self.message = message
        self.kind = kind
        self.correlation_id = next(_next_correlation) if correlation_id is None else correlation_id
        self._port = port
        self.answered = kind == "cast"
        self.trace_id = trace_id
        self.deferred = False
        # Wire check (Registry.wire_check): the actor's codecs, to send every reply and
        # refusal through them as a link would.
        self.wire: Any = None

    def defer(self) -> None:
        """The handler keeps this envelope and answers later (a long-lived stream)."""
        self.deferred = True

    @property
    def closed(self) -> bool:
        """The caller stopped listening (cancelled, disconnected) before the answer."""
        return self._port is None and not self.answered

    def send(self, item: Any) -> None:
        """One stream item. Never blocks: stream ports are sized by the caller."""
        if self.kind != "stream" or self.answered:
            raise RuntimeError(f"send() on a {self.kind} envelope that is answered={self.answered}")
        self._put(("item", self._over_wire(item)))

    def reply(self, value: Any = None) -> None:
        """Terminal answer (the reply of a call, the end of a stream)."""
        if self.answered:
            return
        self.answered = True
        self._put(("done", self._over_wire(value)))

    def fail(self, error: BaseException) -> None:
        if self.answered:
            return
        self.answered = True
        if self.wire is not None and isinstance(error, Rejected) and self.wire.errors:
            codec = self.wire.errors
            error = Rejected(error.actor, codec.decode(codec.encode(error.error)))
        self._put(("error", error))

    def _over_wire(self, value: Any) -> Any:
        if self.wire is None:
            return value
        return self.wire.replies.decode(self.wire.replies.encode(value))

    def _put(self, item: ReplyItem) -> None:
        if self._port is None:
            return
        try:
            self._port.send_nowait(item)
        except trio.WouldBlock:
            # A reader that stopped reading a stream: drop it rather than block the actor;
            # the reader gets an error once it reads again (see ActorRef.stream).
            self._port.close()
            self._port = None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._port = None  # caller went away (timed out or cancelled)
        if self.answered and self._port is not None:
            self._port.close()


def error_for_caller(actor: str, exc: BaseException) -> BaseException:
    """The exception a caller sees when the handler raised `exc`."""
    if isinstance(exc, (ActorCrashed, RemoteError, Rejected)):
        return exc
    return RemoteError(actor, type(exc).__name__, str(exc))
