"""Errors the actor runtime raises to callers. Each says which actor and what to do."""

from __future__ import annotations

from typing import Any


class ActorError(Exception):
    """Base class for runtime errors."""


class ActorUnavailable(ActorError):
    """No running actor under that name right now (not started, stopped, or restarting).

    The runtime does not queue messages for an actor that is down: callers decide whether
    to retry (see docs/actors.md, "messages during a restart").
    """

    def __init__(self, name: str, why: str = "not running") -> None:
        self.name = name
        super().__init__(f"actor {name!r} is unavailable: {why}")


class InjectedCrash(Exception):
    """Raised inside an actor on purpose by the chaos harness (`inject_crash`)."""


class ActorCrashed(ActorError):
    """The actor died while handling (or before answering) this request."""

    def __init__(self, name: str, cause: str) -> None:
        self.name, self.cause = name, cause
        super().__init__(f"actor {name!r} crashed before answering: {cause}")


class CallTimeout(ActorError, TimeoutError):
    def __init__(self, name: str, timeout_s: float) -> None:
        self.name = name
        super().__init__(f"actor {name!r} did not answer within {timeout_s:.3g}s")


class MailboxFull(ActorError):
    def __init__(self, name: str, capacity: int, timeout_s: float) -> None:
        self.name = name
        super().__init__(
            f"mailbox of actor {name!r} stayed full ({capacity} messages) for {timeout_s:.3g}s"
        )


class RemoteError(ActorError):
    """The handler raised; carries the remote exception's type name and message."""

    def __init__(self, name: str, kind: str, message: str) -> None:
        self.name, self.kind, self.remote_message = name, kind, message
        super().__init__(f"actor {name!r} raised {kind}: {message}")


class Rejected(Exception):
    """The actor said no, in its own protocol: `error` is a msgspec Struct of the actor's
    `error_type` (with a `message`), and callers get this same Struct wherever the actor
    runs, in this process or across a link. Not an ActorError: the actor works fine, it
    refused this request (overloaded, not ready...), so nothing is retried or restarted."""

    def __init__(self, actor: str, error: Any) -> None:
        self.actor, self.error = actor, error
        super().__init__(str(getattr(error, "message", error)))


class RestartIntensityExceeded(ActorError):
    """A supervisor saw more than MaxR restarts in MaxT seconds and gave up (escalates)."""

    def __init__(self, supervisor: str, max_restarts: int, max_seconds: float, last: str) -> None:
        self.supervisor = supervisor
        super().__init__(
            f"supervisor {supervisor!r}: more than {max_restarts} restarts in "
            f"{max_seconds:g}s, giving up (last failure: {last})"
        )


def is_cancellation(exc: BaseException) -> bool:
    """True for trio.Cancelled, or an exception group holding only cancellations."""
    import trio

    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_cancellation(e) for e in exc.exceptions)
    return False


def describe(exc: BaseException) -> str:
    """'Type: message' of the first real error, unwrapping single-member groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
