"""The model manager: which models are loaded, loading them, and letting them go.

Models named at start (`--model`, `model.serve`) load before the port opens and stay.
Any other model in the store loads on its first request (`server.autoload`) and stays
for its `keep_alive`: the request's (Ollama's: a duration, 0 unloads after the request,
-1 keeps it) or `server.keep_alive_s`. A request holds a lease on its model while it
runs, so a model in use is never unloaded under it.

Before a load: at most `server.max_loaded_models` models, the least recently used idle
one unloaded to make room; and the memory the model needs (weights + KV cache) must be
free, else 503 saying how much it needs and how much there is. A request that arrives
while its model loads waits for it (up to `server.model_load_timeout_s`); a load that
fails answers 503 with the reason, and the model is available to try again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import trio

from actors import Actor, ActorInfo, ActorRef, Supervisor

from ..config import Config
from ..ingress.errors import APIError
from ..ingress.image_fetch import ImageFetch
from ..ingress.served import ServedModel
from ..metrics import Metrics
from ..model.store import ModelStoreError, list_models, resolve
from .keep_alive import keep_alive_seconds
from .memory import available_bytes, footprint, gib
from .subtree import EngineHandle, engine_subtree, subtree_name

log = logging.getLogger("inferflux.models")
State = Literal["available", "loading", "loaded", "unloading", "failed"]
REAP_EVERY_S = 1.0


@dataclass
class Entry:
    """One model the server knows, loaded or not."""

    id: str
    path: str
    aliases: set[str] = field(default_factory=set)
    state: State = "available"
    pinned: bool = False  # named at start: never unloaded for idleness or room
    served: ServedModel | None = None
    engine: EngineHandle | None = None
    leases: int = 0
    last_used: float = 0.0
    keep_until: float = math.inf  # monotonic time after which an idle model unloads
    loaded: trio.Event = field(default_factory=trio.Event)
    error: str = ""
    load_s: float = 0.0
    memory_bytes: int = 0  # weights + KV cache, while loaded


@dataclass
class Lease:
    """A request's hold on a loaded model; released when its response is done."""

    model: ServedModel
    scheduler: ActorRef
    workers: list[ActorRef]
    release: Callable[[], None]


class ModelManager(Actor):
    """Runs the models' subtrees under a supervisor of its own (`engines`): if the manager
    crashes, its models stop with it, and the restarted manager loads the startup models
    again (nothing is left running that nobody knows about)."""

    kind = "models"

    def __init__(
        self,
        name: str,
        *,
        config: Config,
        metrics: Metrics,
        startup: list[tuple[str, str, set[str]]],
        socket_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        """`startup`: (served id, GGUF path, other names) of the models to load before
        serving. The
        ingress calls it in process (no messages): a lease holds the ServedModel it
        renders with."""
        super().__init__(name, **kwargs)
        self.config, self.metrics = config, metrics
        self.engines = Supervisor("engines", [], max_restarts=10, max_seconds=60)
        self.socket_dir = socket_dir
        self.entries: dict[str, Entry] = {}
        self.startup = startup

    async def started(self) -> None:
        await self.nursery.start(self._run_engines)
        for model_id, path, names in self.startup:
            entry = self._entry(model_id, path, names)
            entry.pinned = True
            await self._load(entry)
            if entry.state != "loaded":
                raise RuntimeError(f"model {model_id!r} did not load: {entry.error}")
        self.nursery.start_soon(self._reap)

    async def _run_engines(self, task_status: trio.TaskStatus[None]) -> None:
        await self.engines.run(task_status=task_status)
        if self.state == "running":  # it gave up: so does the manager (its supervisor decides)
            raise RuntimeError("the engines supervisor stopped")

    async def _handle_loop(self) -> None:
        await super()._handle_loop()  # until request_stop
        # A graceful stop: the models' subtrees stop in order (workers get their time).
        self.engines.request_stop()
        while self.engines.state not in ("stopped", "crashed"):
            await trio.sleep(0.05)

    async def stopping(self) -> None:
        for entry in self.entries.values():
            entry.loaded.set()  # nobody keeps waiting for a load that will not come

    def info(self) -> ActorInfo:
        return msgspec.structs.replace(super().info(), children=[self.engines.info()])

    def find(self, name: str) -> Any:
        """An actor in a model's subtree (for chaos commands and tests)."""
        return self.engines.find(name)

    # what the ingress asks -------------------------------------------------------------
    @property
    def default_id(self) -> str:
        return self.startup[0][0] if self.startup else ""

    def ready(self) -> bool:
        """Every model named at start is loaded and has a worker ready."""
        return all(
            e.state == "loaded" and e.engine is not None and e.engine.ready
            for e in self.entries.values()
            if e.pinned
        )

    async def acquire(self, requested: str | None, keep_alive: Any = None) -> Lease:
        """A lease on `requested` (None: the default model), loading it first if it is
        not loaded. 404 for a model this server cannot serve; 503 when it cannot load."""
        keep = keep_alive_seconds(keep_alive)
        entry = self._find(requested or self.default_id)
        if entry.state in ("available", "failed"):
            await self._load(entry)
        elif entry.state == "loading":
            with trio.move_on_after(self.config.server.model_load_timeout_s):
                await entry.loaded.wait()
        if entry.state != "loaded" or entry.served is None or entry.engine is None:
            raise APIError(
                503,
                f"model {entry.id!r} is not available: {entry.error or entry.state}",
                type="service_unavailable",
                code="model_not_loaded",
                retry_after_s=5,
            )
        entry.leases += 1
        entry.last_used = time.monotonic()
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            entry.leases -= 1
            entry.last_used = time.monotonic()
            if not entry.pinned:
                seconds = self.config.server.keep_alive_s if keep is None else keep
                entry.keep_until = entry.last_used + seconds

        return Lease(entry.served, entry.engine.scheduler, entry.engine.workers, release)

    def describe(self, detailed: bool = False) -> list[dict[str, Any]]:
        """Every model the server knows or the store holds, with its state."""
        known = {e.id: e for e in self.entries.values()}
        described = [self._describe(e, detailed) for e in known.values()]
        if self.config.server.autoload:
            for manifest in _stored():
                if not any(
                    manifest.name == e.id or manifest.name in e.aliases for e in known.values()
                ):
                    answer: dict[str, Any] = {"id": manifest.name, "state": "available"}
                    if detailed:
                        answer |= {"path": str(manifest.path), "aliases": manifest.aliases}
                    described.append(answer)
        return described

    def _describe(self, entry: Entry, detailed: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = {"id": entry.id, "state": entry.state}
        if detailed:
            answer |= {"path": entry.path, "aliases": sorted(entry.aliases),
                       "pinned": entry.pinned, "load_s": round(entry.load_s, 2)}  # fmt: skip
        if entry.state == "loaded":
            answer |= {"memory_bytes": entry.memory_bytes, "requests": entry.leases}
            answer["expires_in_s"] = (
                None if entry.pinned or math.isinf(entry.keep_until)
                else max(0.0, round(entry.keep_until - time.monotonic(), 1))
            )  # fmt: skip
        if entry.error:
            answer["error"] = entry.error
        return answer

    # admin -----------------------------------------------------------------------------
    async def load(self, requested: str) -> dict[str, Any]:
        entry = self._find(requested)
        if entry.state != "loaded":
            await self._load(entry)
        if entry.state != "loaded":
            raise APIError(503, f"model {entry.id!r} did not load: {entry.error}",
                           type="service_unavailable", code="model_not_loaded")  # fmt: skip
        return self._describe(entry)

    async def unload(self, requested: str) -> dict[str, Any]:
        entry = self._find(requested)
        if entry.leases:
            raise APIError(409, f"model {entry.id!r} is serving {entry.leases} requests",
                           code="model_busy")  # fmt: skip
        entry.pinned = False  # an admin's unload outranks the start's "keep loaded"
        await self._unload(entry)
        return self._describe(entry)

    # loading and unloading -------------------------------------------------------------
    def _entry(self, model_id: str, path: str, aliases: set[str] | None = None) -> Entry:
        entry = self.entries.get(model_id)
        if entry is None:
            entry = self.entries[model_id] = Entry(model_id, path, aliases or set())
        return entry

    def _find(self, requested: str) -> Entry:
        for entry in self.entries.values():
            if requested == entry.id or requested in entry.aliases:
                return entry
        if self.config.server.autoload:
            try:
                manifest = resolve(requested)
            except ModelStoreError:
                manifest = None
            if manifest is not None and manifest.dir:  # stored models only: no paths
                for entry in self.entries.values():
                    if entry.id == manifest.name or manifest.name in entry.aliases:
                        return entry
                names = {manifest.name, *manifest.aliases, requested} - {manifest.name}
                return self._entry(manifest.name, str(manifest.path), names)
        served = ", ".join(sorted(self.entries))
        raise APIError(
            404,
            f"model {requested!r} does not exist; this server serves {served}"
            + (" and what `inferflux models list` shows" if self.config.server.autoload else ""),
            param="model",
            code="model_not_found",
        )

    async def _load(self, entry: Entry) -> None:
        if entry.state == "loading":
            await entry.loaded.wait()
            return
        entry.state, entry.error, entry.loaded = "loading", "", trio.Event()
        started, server = time.monotonic(), self.config.server
        try:
            await self._make_room(entry)
            served = await trio.to_thread.run_sync(
                ServedModel.open,
                entry.id,
                entry.path,
                self.config.model.ctx_size,
                self._mmproj(entry),
                ImageFetch(tuple(server.image_fetch), server.image_fetch_timeout_s),
            )
            # The first startup model is the one a prefill or decode node serves its peers.
            clustered = bool(self.startup) and entry.id == self.startup[0][0]
            spec, handle = engine_subtree(
                self.config, served, entry.path, self.metrics, self.socket_dir, clustered
            )
            await self.engines.start_child(spec)
            with trio.fail_after(self.config.server.model_load_timeout_s):
                while not handle.ready:
                    await trio.sleep(0.05)
        except APIError as exc:
            self._failed(entry, exc.message)
            raise
        except Exception as exc:
            self._failed(entry, f"{type(exc).__name__}: {exc}")
            await self._drop_subtree(entry)
            return
        finally:
            entry.loaded.set()
        entry.served, entry.engine, entry.state = served, handle, "loaded"
        fp = footprint(entry.path, self._slots(), served.ctx_size)
        entry.memory_bytes = fp.weights + fp.kv_cache
        entry.load_s = time.monotonic() - started
        entry.last_used = time.monotonic()
        entry.keep_until = (
            math.inf if entry.pinned else entry.last_used + self.config.server.keep_alive_s
        )
        self.metrics.model_load.labels(model=entry.id, role=self.config.role).observe(entry.load_s)
        log.info("model %r loaded in %.1fs", entry.id, entry.load_s)

    def _slots(self) -> int:
        """Slots a loaded model holds KV for: every worker's."""
        return self.config.scheduler.n_parallel * self.config.model.workers

    def _mmproj(self, entry: Entry) -> str:
        """The projector for images (issue 16): --mmproj / model.mmproj for the first
        startup model, else the one the store keeps with the model."""
        if self.config.model.mmproj and self.startup and entry.id == self.startup[0][0]:
            return self.config.model.mmproj
        try:
            found = resolve(entry.path).mmproj_path
        except (ModelStoreError, OSError):
            return ""
        return str(found) if found else ""

    def _failed(self, entry: Entry, why: str) -> None:
        entry.state, entry.error = "failed", why
        log.error("model %r did not load: %s", entry.id, why)

    async def _make_room(self, entry: Entry) -> None:
        """Unload idle models, least recently used first, until the server holds fewer than
        max_loaded_models and the new model's memory is free; 503 if that cannot be."""
        loaded = [e for e in self.entries.values() if e.state == "loaded"]
        need = footprint(entry.path, self._slots(), self.config.model.ctx_size)
        idle = sorted(
            (e for e in loaded if not e.leases and not e.pinned), key=lambda e: e.last_used
        )
        while idle and (
            len(loaded) >= self.config.server.max_loaded_models or available_bytes() < need.total
        ):
            victim = idle.pop(0)
            log.info("unloading idle model %r to make room for %r", victim.id, entry.id)
            await self._unload(victim)
            loaded.remove(victim)
        if len(loaded) >= self.config.server.max_loaded_models:
            raise APIError(
                503,
                f"{len(loaded)} models are loaded and busy (server.max_loaded_models); "
                f"{entry.id!r} cannot load now",
                type="service_unavailable",
                code="models_busy",
                retry_after_s=5,
            )
        free = available_bytes()
        if free < need.total:
            raise APIError(503, f"model {entry.id!r} needs about {gib(need.total)} (weights "
                           f"{gib(need.weights)}, KV cache {gib(need.kv_cache)}); {gib(free)} "
                           "is free", type="service_unavailable", code="insufficient_memory",
                           retry_after_s=30)  # fmt: skip

    async def _unload(self, entry: Entry) -> None:
        if entry.state != "loaded":
            return
        entry.state = "unloading"
        await self._drop_subtree(entry)
        entry.state, entry.served, entry.engine = "available", None, None
        entry.keep_until = math.inf
        log.info("model %r unloaded", entry.id)

    async def _drop_subtree(self, entry: Entry) -> None:
        try:
            await self.engines.stop_child(subtree_name(entry.id))
        except KeyError:
            pass

    async def _reap(self) -> None:
        """Unload models idle past their keep_alive; forget subtrees that are gone (their
        supervisor was restarted: dynamic children do not come back)."""
        while True:
            await trio.sleep(REAP_EVERY_S)
            now = time.monotonic()
            running = {child.name for child in self.engines.info().children}
            for entry in list(self.entries.values()):
                if entry.state != "loaded":
                    continue
                if subtree_name(entry.id) not in running:
                    entry.state, entry.served, entry.engine = "available", None, None
                    log.warning("model %r lost its engine subtree; it loads again on demand",
                                entry.id)  # fmt: skip
                elif not entry.leases and not entry.pinned and now >= entry.keep_until:
                    await self._unload(entry)

    def details(self) -> dict[str, float | int | str]:
        states = [e.state for e in self.entries.values()]
        return {state: states.count(state) for state in ("loaded", "loading", "available")}


def _stored() -> list[Any]:
    try:
        return list_models()
    except (ModelStoreError, OSError):
        return []
