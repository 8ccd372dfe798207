"""Supervisor with Erlang/OTP semantics.

Strategies (what restarts when one child exits and must be restarted):
  one_for_one   only that child;
  one_for_all   every child: the others are stopped in reverse order, then all start in order;
  rest_for_one  that child and every child started after it.
Restart types (whether an exit calls for a restart):
  permanent     always; transient  only after a crash (an exception); temporary  never.
Intensity: more than `max_restarts` restarts within `max_seconds` means restarting is not
helping; the supervisor stops its children (reverse order) and raises
RestartIntensityExceeded, which its own supervisor sees as a crash of this child
(escalation). The top-level supervisor's error reaches whoever runs it.

Children start in list order, each only after the previous one reported started; they stop
in reverse order, each given its own shutdown timeout before it is cancelled.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Literal, Protocol

import msgspec
import trio

from ._errors import RestartIntensityExceeded, describe
from ._info import ActorInfo, State

log = logging.getLogger("actors.supervisor")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
RestartType = Literal["permanent", "transient", "temporary"]


class Child(Protocol):
    name: str

    async def run(self, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def request_stop(self) -> None: ...

    def info(self) -> ActorInfo: ...


class ChildSpec(msgspec.Struct, frozen=True):
    """How to (re)start one child. `start` builds a fresh instance for every start."""

    name: str
    start: Callable[[], Child]
    restart: RestartType = "permanent"
    shutdown_timeout_s: float = 5.0


class _Slot:
    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.instance: Child | None = None
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.stopping = False
        self.restarts = 0
        self.last_error = ""
        self.generation = 0

    @property
    def running(self) -> bool:
        return self.instance is not None and not self.done.is_set()


class Supervisor:
    kind = "supervisor"

    def __init__(
        self,
        name: str,
        children: list[ChildSpec],
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        on_give_up: Callable[[RestartIntensityExceeded], None] | None = None,
    ) -> None:
        """`on_give_up` is told when the intensity is exceeded, before the escalation: the
        place to fail the work that depended on these children, loudly and at once."""
        names = [c.name for c in children]
        if len(set(names)) != len(names):
            raise ValueError(f"supervisor {name!r}: duplicate child names in {names}")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.on_give_up = on_give_up
        self.state: State = "starting"
        self.last_error = ""
        self._slots = [_Slot(spec) for spec in children]
        self._restart_times: deque[float] = deque()
        # Exits are rare and each is handled at once; children may be added later.
        self._exits_in, self._exits_out = trio.open_memory_channel[tuple[_Slot, int, str]](1024)
        self._stop_requested = trio.Event()
        self._nursery: trio.Nursery | None = None

    # public ------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requested.set()

    async def start_child(self, spec: ChildSpec) -> Child:
        """Add a child to a running supervisor and start it (OTP's start_child): it is
        supervised like the others from then on. A child that fails to start is not
        added, and its error is raised."""
        if self._nursery is None or self.state not in ("starting", "running"):
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        if any(slot.spec.name == spec.name for slot in self._slots):
            raise ValueError(f"supervisor {self.name!r} already has a child {spec.name!r}")
        slot = _Slot(spec)
        self._slots.append(slot)
        try:
            await self._start(slot)
        except BaseException:
            self._slots.remove(slot)
            raise
        assert slot.instance is not None
        return slot.instance

    async def stop_child(self, name: str) -> None:
        """Stop a child and forget it (OTP's terminate_child then delete_child); a stop,
        not a crash: nothing is restarted and nothing counts against the intensity."""
        slot = next((s for s in self._slots if s.spec.name == name), None)
        if slot is None:
            raise KeyError(name)
        await self._stop_slots([slot])
        self._slots.remove(slot)

    def child(self, name: str) -> Child | None:
        """The running instance of a child, for tests and introspection."""
        for slot in self._slots:
            if slot.spec.name == name:
                return slot.instance if slot.running else None
        raise KeyError(name)

    def find(self, name: str) -> Child | None:
        """The running actor called `name` anywhere below this supervisor."""
        for slot in self._slots:
            instance = slot.instance if slot.running else None
            if instance is None:
                continue
            if slot.spec.name == name:
                return instance
            finder = getattr(instance, "find", None)  # a supervisor, or an actor owning one
            if finder is not None:
                found = finder(name)
                if found is not None:
                    return found
        return None

    def info(self) -> ActorInfo:
        children = []
        for slot in self._slots:
            if slot.instance is not None:
                info = slot.instance.info()
                state = (
                    info.state if slot.running else ("crashed" if slot.last_error else "stopped")
                )
                info = msgspec.structs.replace(
                    info,
                    state=state,
                    restarts=slot.restarts,
                    last_error=info.last_error or slot.last_error,
                )
            else:
                info = ActorInfo(
                    name=slot.spec.name,
                    kind="child",
                    state="stopped",
                    restarts=slot.restarts,
                    last_error=slot.last_error,
                )
            children.append(info)
        return ActorInfo(
            name=self.name,
            kind=self.kind,
            state=self.state,
            last_error=self.last_error,
            children=children,
            restarts=len(self._restart_times),
        )

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    for slot in list(self._slots):  # not children added meanwhile
                        await self._start(slot)
                    self.state = "running"
                    task_status.started()
                    await self._supervise()
                finally:
                    self.state = "stopping"
                    with trio.CancelScope(shield=True):
                        await self._stop_slots(self._slots)
                nursery.cancel_scope.cancel()
        except BaseException as exc:
            self.last_error = describe(exc)
            self.state = "crashed"
            raise
        self.state = "stopped"

    # internals ---------------------------------------------------------------------
    async def _start(self, slot: _Slot) -> None:
        assert self._nursery is not None
        slot.instance = slot.spec.start()
        slot.done = trio.Event()
        slot.stopping = False
        slot.generation += 1
        await self._nursery.start(self._run_child, slot, slot.generation)

    async def _run_child(
        self, slot: _Slot, generation: int, task_status: trio.TaskStatus[None]
    ) -> None:
        error = ""
        started = False

        async def tracked(task_status: trio.TaskStatus[None]) -> None:
            assert slot.instance is not None
            await slot.instance.run(task_status=task_status)

        try:
            with trio.CancelScope() as scope:
                slot.scope = scope
                try:
                    async with trio.open_nursery() as inner:
                        await inner.start(tracked)
                        started = True
                        task_status.started()
                except Exception as exc:
                    error = describe(exc)
                    slot.last_error = error
                    log.error("%s/%s crashed: %s", self.name, slot.spec.name, error, exc_info=exc)
                    if not started:
                        raise
        finally:
            slot.done.set()
        if not slot.stopping:
            self._exits_in.send_nowait((slot, generation, error))

    async def _supervise(self) -> None:
        async with trio.open_nursery() as watch:

            async def wait_stop() -> None:
                await self._stop_requested.wait()
                watch.cancel_scope.cancel()

            watch.start_soon(wait_stop)
            async for slot, generation, error in self._exits_out:
                if generation != slot.generation:
                    continue  # an exit we caused while restarting a group
                if not self._should_restart(slot, error):
                    continue
                self._count_restart(slot, error)
                await self._restart_for(slot)

    def _should_restart(self, slot: _Slot, error: str) -> bool:
        restart = slot.spec.restart
        return restart == "permanent" or (restart == "transient" and bool(error))

    def _count_restart(self, slot: _Slot, error: str) -> None:
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.max_seconds:
            self._restart_times.popleft()
        if len(self._restart_times) > self.max_restarts:
            exceeded = RestartIntensityExceeded(
                self.name,
                self.max_restarts,
                self.max_seconds,
                f"{slot.spec.name}: {error or 'exited'}",
            )
            if self.on_give_up is not None:
                try:
                    self.on_give_up(exceeded)
                except Exception:
                    log.exception("%s: on_give_up hook failed", self.name)
            raise exceeded
        slot.restarts += 1

    async def _restart_for(self, failed: _Slot) -> None:
        index = self._slots.index(failed)
        if self.strategy == "one_for_one":
            group = [failed]
        elif self.strategy == "one_for_all":
            group = list(self._slots)
        else:
            group = self._slots[index:]
        await self._stop_slots(group)
        for slot in group:
            if slot is not failed and slot.spec.restart == "temporary":
                continue
            if slot is not failed and slot.instance is not None:
                slot.restarts += 1
            try:
                await self._start(slot)
            except Exception as exc:
                # A failed restart counts against intensity like any other crash.
                slot.last_error = describe(exc)
                self._exits_in.send_nowait((slot, slot.generation, slot.last_error))

    async def _stop_slots(self, slots: list[_Slot]) -> None:
        for slot in reversed(slots):
            if not slot.running:
                continue
            slot.stopping = True
            assert slot.instance is not None
            started = time.monotonic()
            slot.instance.request_stop()
            with trio.move_on_after(slot.spec.shutdown_timeout_s):
                await slot.done.wait()
            if not slot.done.is_set():
                log.warning(
                    "%s/%s did not stop within %.3gs: cancelling it",
                    self.name,
                    slot.spec.name,
                    slot.spec.shutdown_timeout_s,
                )
                assert slot.scope is not None
                slot.scope.cancel()
                await slot.done.wait()
            log.debug(
                "%s/%s stopped in %.2fs", self.name, slot.spec.name, time.monotonic() - started
            )
