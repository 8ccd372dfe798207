"""What the HTTP layer works with: fixed parts (`Services`, built with the server) and the
ingress actor's running state (`IngressState`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from actors import ActorInfo

from ..metrics import Metrics
from ..tracing import RequestTracer
from .browser import BrowserGuard
from .directory import ModelDirectory
from .gate import Gate
from .generation import InFlight
from .response_store import ResponseStore


@dataclass(frozen=True)
class Services:
    models: ModelDirectory
    gate: Gate
    metrics: Metrics
    snapshot: Callable[[], ActorInfo]
    """The supervision tree, for /debug/actors."""
    max_body_bytes: int
    tracer: RequestTracer | None = None
    """OpenTelemetry export, when configured."""
    browser: BrowserGuard = field(default_factory=lambda: BrowserGuard("127.0.0.1", [], []))
    """CORS and the Host check (browser.py)."""
    request_timeout_s: float = 0.0
    """Deadline of a generation request from its arrival (0: none)."""
    responses: ResponseStore = field(default_factory=ResponseStore)
    """Stored responses of the Responses API (outlive an ingress restart)."""
    openai_api: bool = True
    """False on a prefill node: health and metrics only (its clients are decode nodes)."""


@dataclass
class IngressState:
    """Owned by the ingress actor: the drain flag, the generations under way, and the
    actor's nursery (tasks that outlive a handler: n > 1 pumps, stream watchdogs)."""

    nursery: trio.Nursery
    draining: bool = False
    in_flight: InFlight = field(default_factory=InFlight)
