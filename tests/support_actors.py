"""Small real actors used by the runtime tests (also started in child processes)."""

from __future__ import annotations

import os
import signal
from typing import Any, Union

import msgspec
import trio

from actors import Actor, Envelope, Rejected


class Echo(msgspec.Struct, tag=True):
    text: str


class Count(msgspec.Struct, tag=True):
    """Stream `n` integers back."""

    n: int


class Crash(msgspec.Struct, tag=True):
    reason: str = "asked to crash"


class Sleep(msgspec.Struct, tag=True):
    seconds: float


class Pid(msgspec.Struct, tag=True):
    pass


class Garbage(msgspec.Struct, tag=True):
    """Streamed: 1, then 1.5 (no reply type the parent decodes), then 2. Ends with "done",
    or with 2.5 when `bad_end`."""

    bad_end: bool = False


class Refuse(msgspec.Struct, tag=True):
    """Answer with a refusal in the protocol (actors.Rejected)."""

    why: str


class Nope(msgspec.Struct, tag=True, frozen=True):
    message: str


TestMessage = Union[Echo, Count, Crash, Sleep, Pid, Garbage, Refuse]


class EchoActor(Actor):
    """Echoes, streams counts, sleeps, crashes on request; counts its starts in `log`."""

    message_type = TestMessage
    reply_type = Union[str, int]
    error_type = Nope

    def __init__(
        self,
        name: str,
        log: list[str] | None = None,
        ignore_sigterm: bool = False,
        exit_after_start: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.log = log if log is not None else []
        self.ignore_sigterm = ignore_sigterm
        self.exit_after_start = exit_after_start

    async def started(self) -> None:
        self.log.append(f"start {self.name}")
        if self.ignore_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.exit_after_start:
            self.request_stop()

    async def stopping(self) -> None:
        self.log.append(f"stop {self.name}")

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        match message:
            case Echo(text):
                return text
            case Count(n):
                for i in range(n):
                    envelope.send(i)
                return n
            case Crash(reason):
                raise RuntimeError(reason)
            case Sleep(seconds):
                await trio.sleep(seconds)
                return "slept"
            case Pid():
                return os.getpid()
            case Refuse(why):
                raise Rejected(self.name, Nope(why))
            case Garbage(bad_end):
                if envelope.kind == "stream":
                    for item in (1, 1.5, 2):
                        envelope.send(item)
                return 2.5 if bad_end else "done"
        raise TypeError(f"unexpected {message!r}")


class Relay(msgspec.Struct, tag=True):
    """Ask the actor `to` (imported from the parent): Echo(text) as a call, Count(n) as a
    stream, then Refuse; answer with what came back."""

    to: str
    text: str
    n: int


class Tell(msgspec.Struct, tag=True):
    """Cast Echo(text) to `to`, `times` times, in order."""

    to: str
    text: str
    times: int


class RelayGarbage(msgspec.Struct, tag=True):
    """Stream Garbage() from `to`: its 1.5 is no reply the child decodes."""

    to: str


class RelayActor(Actor):
    """Reaches actors of its parent by name (ProcessActor imports)."""

    message_type = Union[Relay, Tell, RelayGarbage]
    reply_type = str

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        from actors import ActorError, ActorRef

        match message:
            case Relay(to, text, n):
                ref = ActorRef(to, self.registry)
                try:
                    echoed = await ref.call(Echo(text))
                    async with ref.stream(Count(n)) as items:
                        counted = [i async for i in items]
                except ActorError as exc:
                    return f"{type(exc).__name__}: {exc}"
                try:
                    await ref.call(Refuse("no"))
                except Rejected as exc:
                    return f"{echoed} {counted} {type(exc.error).__name__}({exc.error.message})"
                return "not refused"
            case RelayGarbage(to):
                try:
                    async with ActorRef(to, self.registry).stream(Garbage()) as items:
                        return f"got {[i async for i in items]}"
                except ActorError as exc:
                    return f"{type(exc).__name__}: {exc}"
            case Tell(to, text, times):
                ref = ActorRef(to, self.registry)
                for i in range(times):
                    ref.cast_nowait(Echo(f"{text}{i}"))
                return "told"
        raise TypeError(f"unexpected {message!r}")


class Recorder(Actor):
    """Keeps every Echo it is cast, in order (in the parent)."""

    message_type = TestMessage
    reply_type = Union[str, int]
    error_type = Nope

    def __init__(self, name: str, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.seen: list[str] = []

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        if isinstance(message, Echo):
            self.seen.append(message.text)
            return message.text
        if isinstance(message, Count):
            for i in range(message.n):
                envelope.send(i)
            return message.n
        if isinstance(message, Refuse):
            raise Rejected(self.name, Nope(message.why))
        if isinstance(message, Garbage):
            for item in (1, 1.5, 2):
                envelope.send(item)
            return "done"
        raise TypeError(f"unexpected {message!r}")
