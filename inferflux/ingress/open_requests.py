"""A cap on the HTTP requests inside the app at once (streams count until they end).

An ASGI wrapper around the app, so a request beyond the cap costs neither routing nor the
policy: it gets a 503 with Retry-After straight away. Idle keep-alive connections hold no
slot (hypercorn closes them after its keep-alive timeout).
"""

from __future__ import annotations

from typing import Any

from .errors import APIError

ASGIApp = Any


class OpenRequestCap:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit, self.open = app, limit, 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            error = APIError(
                503,
                f"the server is handling {self.open} requests, its limit; retry shortly",
                type="service_unavailable",
                code="too_many_requests_open",
                retry_after_s=1,
            )
            headers = [(k.encode(), v.encode()) for k, v in error.headers().items()]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": error.body()})
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1
