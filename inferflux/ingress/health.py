"""Operational endpoints, open to all: /livez, /readyz, /healthz, /metrics, /debug/actors."""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response

from .http import json_bytes, json_response
from .services import IngressState, Services


def health_blueprint(services: Services, state: IngressState) -> Blueprint:
    health = Blueprint("health", __name__)

    def readiness() -> tuple[bool, list[str]]:
        reasons = []
        if state.draining:
            reasons.append("draining")
        if not services.models.ready():
            reasons.append("no model worker ready")
        return not reasons, reasons

    @health.get("/livez")
    async def livez() -> Response:
        return json_bytes(b'{"status":"alive"}')

    @health.get("/readyz")
    async def readyz() -> Response:
        ready, reasons = readiness()
        body = {"status": "ready"} if ready else {"status": "not ready", "reason": reasons[0]}
        return json_response(body, 200 if ready else 503)

    @health.get("/healthz")
    async def healthz() -> Response:
        """Both answers in one JSON body (always 200 while the process serves HTTP)."""
        ready, reasons = readiness()
        return json_response(
            {
                "status": "ready" if ready else "not ready",
                "live": True,
                "ready": ready,
                "reasons": reasons,
                "model": services.models.default_id,
            }
        )

    @health.get("/metrics")
    async def metrics() -> Response:
        registry = services.metrics.registry
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @health.get("/debug/actors")
    async def actors_snapshot() -> Response:
        """The supervision tree as JSON (what inferflux-top shows)."""
        return json_bytes(msgspec.json.encode(services.snapshot()))

    return health
