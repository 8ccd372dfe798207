"""The model directory the ingress holds, whichever model manager runs now."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..ingress.errors import APIError
from .manager import Lease, ModelManager


class CurrentModels:
    """The model directory the ingress holds: whichever ModelManager runs now (a restarted
    manager is a new instance)."""

    def __init__(self, current: Callable[[], Any]) -> None:
        self._current = current

    def _manager(self) -> ModelManager:
        manager = self._current()
        if not isinstance(manager, ModelManager):
            raise APIError(503, "the model manager is restarting", type="service_unavailable",
                           code="not_ready", retry_after_s=2)  # fmt: skip
        return manager

    @property
    def default_id(self) -> str:
        manager = self._current()
        return manager.default_id if isinstance(manager, ModelManager) else ""

    def ready(self) -> bool:
        manager = self._current()
        return isinstance(manager, ModelManager) and manager.ready()

    async def acquire(self, requested: str | None, keep_alive: Any = None) -> Lease:
        return await self._manager().acquire(requested, keep_alive)

    def describe(self, detailed: bool = False) -> list[dict[str, Any]]:
        manager = self._current()
        return manager.describe(detailed) if isinstance(manager, ModelManager) else []

    async def load(self, requested: str) -> dict[str, Any]:
        return await self._manager().load(requested)

    async def unload(self, requested: str) -> dict[str, Any]:
        return await self._manager().unload(requested)
