"""The ingress actor: hypercorn serving the quart-trio app inside the actor tree.

Stopping it is graceful: hypercorn stops accepting, in-flight responses get
`graceful_timeout` to finish, then the actor ends.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from actors import Actor

from .app import Frontend, create_app

log = logging.getLogger("inferflux.ingress")


class IngressActor(Actor):
    def __init__(
        self,
        name: str,
        *,
        front: Frontend,
        host: str,
        port: int,
        graceful_timeout_s: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.front = front
        self.host, self.port = host, port
        self.graceful_timeout_s = graceful_timeout_s
        self.bound: list[str] = []
        self._shutdown = trio.Event()  # stop accepting

    async def started(self) -> None:
        config = HypercornConfig()
        config.bind = [f"{self.host}:{self.port}"]
        config.graceful_timeout = self.graceful_timeout_s
        config.keep_alive_timeout = 5
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        app = create_app(self.front)

        async def serve_until_drained(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(
                    app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status
                )
            finally:
                self._drained.set()

        self.bound = await self.nursery.start(serve_until_drained)
        if self.port == 0 and self.bound:
            self.port = int(self.bound[0].rsplit(":", 1)[1])

    def request_stop(self) -> None:
        self._shutdown.set()
        super().request_stop()

    async def _handle_loop(self) -> None:
        # No messages to handle. On a stop request hypercorn stops accepting; we wait for
        # the generations under way (not for idle keep-alive connections, which hypercorn
        # would wait out to its graceful timeout), then leave, which closes the rest.
        await self._shutdown.wait()
        drained = await self.front.in_flight.wait_zero(self.graceful_timeout_s)
        if not drained:
            log.warning(
                "drain timeout: %d requests still running are cut", self.front.in_flight.count
            )

    def details(self) -> dict[str, float | int | str]:
        return {"url": f"http://{self.host}:{self.port}"}
