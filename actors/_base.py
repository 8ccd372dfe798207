"""What an in-process actor and a process actor's proxy share: a mailbox in a registry, the
counters introspection shows, and how either one goes down.

Going down is the same for both whatever the cause (a crash, a stop, a cancellation): the
cause is recorded unless it was a cancellation (a stop is not a crash), the mailbox leaves
the registry, and nobody is left waiting: requests in flight get ActorCrashed, queued ones
ActorUnavailable. `run` in each subclass calls `_record_crash` from its `except` and
`_go_down` / `_settle_state` from its `finally`, around its own cleanup.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._envelope import Envelope
from ._errors import ActorCrashed, ActorUnavailable, describe, is_cancellation
from ._info import ActorInfo, State
from ._link import PayloadCodecs
from ._mailbox import Mailbox
from ._registry import Registry, registry


class BaseActor:
    kind: str = "actor"
    mailbox_capacity: int = 256
    pid: int  # the OS process the actor runs in (0: not started)

    def __init__(self, name: str, *, in_registry: Registry | None = None) -> None:
        self.name = name
        self.state: State = "starting"
        self.registry = in_registry or registry
        self.mailbox = Mailbox(name, self.mailbox_capacity)
        self.mailbox.protocol = PayloadCodecs.of(type(self))
        self.messages_out = 0
        self.last_error = ""

    def details(self) -> dict[str, float | int | str]:
        """Extra numbers for introspection (queue lengths, tok/s...)."""
        return {}

    def info(self) -> ActorInfo:
        return ActorInfo(
            name=self.name,
            kind=self.kind,
            state=self.state,
            pid=self.pid,
            mailbox_depth=self.mailbox.depth,
            messages_in=self.mailbox.messages_in,
            messages_out=self.messages_out,
            last_error=self.last_error,
            details=self.details(),
        )

    def _record_crash(self, exc: BaseException) -> None:
        if not is_cancellation(exc):
            self.state = "crashed"
            self.last_error = describe(exc)

    def _go_down(self, in_flight: Iterable[Envelope], queued_reason: str) -> None:
        """Unregister, then answer every request in flight and every queued one. Never
        checkpoints, so no new request can slip in between."""
        cause = self.last_error or "stopped"
        self.registry.unregister(self.name, self.mailbox, cause)
        for envelope in in_flight:  # one exception each: every caller raises its own
            envelope.fail(ActorCrashed(self.name, cause))
        self.mailbox.fail_pending(ActorUnavailable(self.name, queued_reason))

    def _settle_state(self) -> None:
        """The final state, once cleanup is done: a crash stays visible."""
        if self.state != "crashed":
            self.state = "stopped"
