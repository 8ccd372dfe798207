"""The models admin API: what is loaded, loading and unloading, pulling into the store.

    GET  /v1/admin/models               -> {"object": "list", "data": [model]}: each model the
                                           server knows or the store holds, with its state,
                                           path, names, memory, requests, expiry
    POST /v1/admin/models/<id>/load     -> the model, loaded (404 unknown, 503 cannot load)
    POST /v1/admin/models/<id>/unload   -> the model, unloaded (409 while it serves requests)
    POST /v1/admin/models/pull          {source, name?} -> 200, JSON lines as the pull
                                           goes: {"status": ...} notes, {"status":
                                           "downloading", "file", "completed", "total"},
                                           then {"status": "success", "model", "pulled"} or
                                           {"error": {...}} (the status line was sent first)

Registered only where a policy is configured (policy_gate.py): every /v1/admin path needs
the `admin` permission, checked before the body is read. `source` is what `inferflux pull`
takes, a path on the server's disk included: an admin is trusted with the server's files.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec
import trio
from quart import Blueprint, Response

from ..model.manifest import check_name
from ..model.pull import pull
from ..model.pull_events import Event, EventProgress
from ..model.sources import SourceError, parse_source
from ..model.store import ModelStoreError
from .directory import ModelDirectory
from .errors import APIError
from .http import json_response, read_json
from .limits import ADMIN_BODY_BYTES

log = logging.getLogger("inferflux.ingress")

PULL_EVENTS_BUFFERED = 16
CLIENT_GONE_AFTER_S = 60.0
"""A client that reads no event for this long has left (or its response never started):
the pull stops."""


class PullRequest(msgspec.Struct, forbid_unknown_fields=True):
    source: str
    name: str = ""


PULL = msgspec.json.Decoder(PullRequest)


def models_admin_blueprint(models: ModelDirectory, nursery: trio.Nursery) -> Blueprint:
    """`nursery`: where pulls run (the ingress actor's): a pull outlives no server."""
    admin = Blueprint("models_admin", __name__, url_prefix="/v1/admin/models")

    @admin.get("")
    @admin.get("/")
    async def list_models() -> Response:
        return json_response({"object": "list", "data": models.describe(detailed=True)})

    @admin.post("/<name>/load")
    async def load(name: str) -> Response:
        return json_response(await models.load(name))

    @admin.post("/<name>/unload")
    async def unload(name: str) -> Response:
        return json_response(await models.unload(name))

    @admin.post("/pull")
    async def pull_model() -> Response:
        body = await read_json(PULL, ADMIN_BODY_BYTES)
        try:
            parse_source(body.source)
        except SourceError as exc:
            raise APIError(400, str(exc), param="source", code="invalid_value") from None
        try:
            if body.name:
                check_name(body.name)
        except ValueError as exc:
            raise APIError(400, str(exc), param="name", code="invalid_value") from None
        send, receive = trio.open_memory_channel[Event](PULL_EVENTS_BUFFERED)
        nursery.start_soon(_pull, body, send)
        return Response(_lines(receive), content_type="application/x-ndjson")

    return admin


async def _pull(body: PullRequest, send: trio.MemorySendChannel[Event]) -> None:
    async def deliver(event: Event) -> None:
        with trio.fail_after(CLIENT_GONE_AFTER_S):
            await send.send(event)

    def emit(event: Event) -> None:
        # From the pull's thread; raises (and so stops the pull) once the client is gone.
        trio.from_thread.run(deliver, event)

    async with send:
        try:
            result = await trio.to_thread.run_sync(
                lambda: pull(body.source, name=body.name, progress=EventProgress(emit)),
                abandon_on_cancel=True,  # a stopping server does not wait for a download
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            log.info("pull of %s stopped: its client left", body.source)
            return
        except ModelStoreError as exc:
            await _send_last(send, _error(str(exc), "invalid_request_error"))
            return
        except Exception as exc:  # a bug in a fetcher: the client hears it, the server lives
            log.exception("pull of %s failed", body.source)
            await _send_last(send, _error(f"{type(exc).__name__}: {exc}", "server_error"))
            return
        log.info("pulled %s as %s", body.source, result.manifest.name)
        await _send_last(
            send, {"status": "success", "model": result.manifest.name, "pulled": result.pulled}
        )


def _error(message: str, kind: str) -> Event:
    return {"error": {"message": message, "type": kind, "param": None, "code": "pull_failed"}}


async def _send_last(send: trio.MemorySendChannel[Event], event: Event) -> None:
    try:
        await send.send(event)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _lines(receive: trio.MemoryReceiveChannel[Event]) -> AsyncIterator[bytes]:
    async with receive:
        async for event in receive:
            yield msgspec.json.encode(event) + b"\n"
