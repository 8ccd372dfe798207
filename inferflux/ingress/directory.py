"""The models this server serves, as the ingress sees them: the manager (serving/manager.py)
implements these; the ingress never imports it (it is a layer above)."""

from __future__ import annotations

from typing import Any, Protocol

from actors import ActorRef

from .served import ServedModel


class Lease(Protocol):
    """A request's hold on a loaded model (serving/manager.py): the model is not unloaded
    while a lease on it is held."""

    model: ServedModel
    scheduler: ActorRef
    workers: list[ActorRef]
    """The model's workers, for embeddings (generations go through the scheduler)."""

    def release(self) -> None: ...


class ModelDirectory(Protocol):
    """The models this server serves (serving/manager.py), as the ingress uses them."""

    @property
    def default_id(self) -> str: ...

    def ready(self) -> bool:
        """Every model named at start is loaded, with a worker ready."""

    async def acquire(self, requested: str | None, keep_alive: Any = None) -> Lease:
        """A lease on a model (None: the default one), loading it if it must: 404 for a
        model it cannot serve, 503 when it cannot load."""

    def describe(self, detailed: bool = False) -> list[dict[str, Any]]:
        """Every model it knows, with its state (`detailed`: and what an admin sees: its
        file, other names, load time)."""

    async def load(self, requested: str) -> dict[str, Any]: ...

    async def unload(self, requested: str) -> dict[str, Any]: ...
