"""The ingress actor: hypercorn serving the quart-trio app inside the actor tree.

Stopping it is graceful: hypercorn stops accepting, in-flight responses get
`graceful_timeout` to finish, then the actor ends.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from actors import Actor

from ..config import ServerConfig
from .app import create_app
from .open_requests import OpenRequestCap
from .services import IngressState, Services

log = logging.getLogger("inferflux.ingress")


class IngressActor(Actor):
    def __init__(
        self,
        name: str,
        *,
        services: Services,
        settings: ServerConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.services = services
        self.settings = settings
        self.serving: IngressState | None = None  # from started() on
        self.host, self.port = settings.host, settings.port
        self.graceful_timeout_s = settings.drain_timeout_s
        self.bound: list[str] = []
        self._draining = trio.Event()  # refuse new work, finish what runs
        self._shutdown = trio.Event()  # close the listener and all connections
        self._served = trio.Event()  # hypercorn has returned

    async def started(self) -> None:
        config = HypercornConfig()
        config.bind = [f"{self.host}:{self.port}"]
        config.graceful_timeout = self.graceful_timeout_s
        config.keep_alive_timeout = 5
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        settings = self.settings
        config.backlog = settings.listen_backlog
        if settings.tls_cert_file:
            config.certfile, config.keyfile = settings.tls_cert_file, settings.tls_key_file
        if settings.tls_client_ca_file:
            config.ca_certs = settings.tls_client_ca_file
            config.verify_mode = ssl.CERT_REQUIRED
        self.serving = IngressState(self.nursery)
        quart_app = create_app(self.services, self.serving)
        # A body that does not arrive in time is a 408. Not hypercorn's read_timeout: that
        # one times every read of the connection, also while a response streams (a client
        # reading a stream sends nothing), so it cut every stream longer than it. Headers
        # are bounded by the idle timeout, which runs until a request's head is complete.
        quart_app.config["BODY_TIMEOUT"] = settings.read_timeout_s or None
        app = OpenRequestCap(quart_app, settings.max_open_requests)

        async def serve_then_signal(task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await serve(
                    app, config, shutdown_trigger=self._shutdown.wait, task_status=task_status
                )
            finally:
                self._served.set()

        self.bound = await self.nursery.start(serve_then_signal)
        if self.port == 0 and self.bound:
            self.port = int(self.bound[0].rsplit(":", 1)[1])

    def request_stop(self) -> None:
        self._draining.set()
        super().request_stop()

    async def _handle_loop(self) -> None:
        # No messages to handle. A stop request starts the drain: /readyz answers 503 and
        # new generations are refused with 503 (load balancers move traffic away), the
        # generations under way finish (up to the drain timeout), then hypercorn closes
        # the listener and every connection. Idle keep-alive connections do not hold the
        # exit (hypercorn alone would wait its whole graceful timeout for them).
        await self._draining.wait()
        assert self.serving is not None  # started() ran
        self.serving.draining = True
        in_flight = self.serving.in_flight
        if not await in_flight.wait_zero(self.graceful_timeout_s):
            log.warning("drain timeout: %d requests still running are cut", in_flight.count)
        self._shutdown.set()
        with trio.move_on_after(1):  # let hypercorn close cleanly; idle connections may not
            await self._served.wait()

    def details(self) -> dict[str, float | int | str]:
        scheme = "https" if self.settings.tls_cert_file else "http"
        return {"url": f"{scheme}://{self.host}:{self.port}"}
