"""Actor: a bounded mailbox, a handle loop, lifecycle hooks, and a nursery for helpers.

Messages are handled one at a time, in order. Work that must run concurrently with the
handle loop (a step loop, a timer) is started from `started()` in `self.nursery`, which
lives exactly as long as the actor. An exception escaping `handle` crashes the actor: the
request being handled is answered with the error, queued requests get ActorUnavailable,
and the supervisor decides what happens next ("let it crash").
"""

from __future__ import annotations

import os
from typing import Any

import trio

from ._base import BaseActor
from ._envelope import Envelope, error_for_caller
from ._errors import ActorCrashed, InjectedCrash, Rejected
from ._registry import Registry


class Actor(BaseActor):
    def __init__(self, name: str, *, in_registry: Registry | None = None) -> None:
        super().__init__(name, in_registry=in_registry)
        self._nursery: trio.Nursery | None = None
        self._deferred: list[Envelope] = []  # requests answered later (long-lived streams)

    # hooks to override -----------------------------------------------------------
    async def started(self) -> None:
        """Runs before the first message; `self.nursery` is open."""

    async def stopping(self) -> None:
        """Runs once the mailbox is drained (graceful stop) or after a crash, shielded."""

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        """Handle one message. For calls the return value is the reply; streams use
        `envelope.send()` and end with `envelope.reply()` (done here if you do not)."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(message)}")

    # runtime ---------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return os.getpid()  # runs in this process, whichever one that is

    @property
    def nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError(f"actor {self.name!r} is not running")
        return self._nursery

    def request_stop(self) -> None:
        """Graceful stop: refuse new messages, finish the queued ones, then exit."""
        if self.state in ("starting", "running"):
            self.state = "stopping"
            self.mailbox.close()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self.started()
                self.registry.register(self.name, self.mailbox)
                if self.state == "starting":
                    self.state = "running"
                task_status.started()
                await self._handle_loop()
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self._record_crash(exc)
            raise
        finally:
            # Deferred streams are in flight: never leave a stream reader waiting.
            self._go_down(self._deferred, "stopped before handling")
            self._deferred.clear()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.stopping()
            self._nursery = None
            self._settle_state()

    async def _handle_loop(self) -> None:
        while True:
            try:
                envelope = await self.mailbox.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            try:
                result = await self.handle(envelope.message, envelope)
            except trio.Cancelled:
                envelope.fail(ActorCrashed(self.name, "stopped while handling"))
                raise
            except Rejected as refusal:  # an answer, not a crash
                envelope.fail(refusal)
                continue
            except Exception as exc:
                envelope.fail(error_for_caller(self.name, exc))
                raise
            if envelope.deferred:
                self._deferred = [e for e in self._deferred if not e.answered]
                self._deferred.append(envelope)
            elif not envelope.answered:
                envelope.reply(result)
                self.messages_out += 1

    def inject_crash(self, where: str = "") -> None:
        """Chaos: crash this actor from inside, as a bug would (an exception in its
        nursery). `where` matters only for process actors."""

        async def crash() -> None:
            raise InjectedCrash("injected by the chaos harness")

        self.nursery.start_soon(crash)
