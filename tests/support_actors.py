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
