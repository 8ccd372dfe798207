"""Request bodies in, JSON out, and every error in OpenAI's shape.

Anything a client sent wrong is a 4xx; an unexpected fault is logged and answered 500 in
the same shape, never a hang.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from .errors import APIError, anthropic_error, from_decode_error

log = logging.getLogger("inferflux.ingress")
T = TypeVar("T")
_encode = msgspec.json.Encoder().encode
ANTHROPIC_PATHS = ("/v1/messages",)


def json_response(payload: Any, status: int = 200) -> Response:
    return json_bytes(_encode(payload), status)


def json_bytes(body: bytes, status: int = 200) -> Response:
    return Response(body, status=status, content_type="application/json")


def error_response(error: APIError) -> Response:
    """In the shape of the API the request was for: Anthropic's on /v1/messages, else
    OpenAI's."""
    body = error.body()
    if request.path.startswith(ANTHROPIC_PATHS):
        body = _encode(anthropic_error(error))
    return Response(body, status=error.status, headers=error.headers())


async def read_json(decoder: msgspec.json.Decoder[T], max_body_bytes: int) -> T:
    """The request body decoded (and validated) by `decoder`."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        too_large = APIError(
            413,
            f"request body of {length} bytes is larger than the limit of {max_body_bytes} bytes",
            code="request_too_large",
        )
        too_large.close_connection = True  # its body is not read
        raise too_large
    body = await request.get_data(cache=False)
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise from_decode_error(exc) from None
    except ValueError as exc:  # msgspec raises UnicodeDecodeError for invalid UTF-8
        raise APIError(
            400, f"request body is not valid UTF-8 JSON: {exc}", code="invalid_json"
        ) from None
    except RecursionError:  # free-form fields (JSON schemas) nested absurdly deep
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None


def require_json_body() -> None:
    """A body, where there is one, must say it is JSON (a form post from a web page cannot
    then reach the API without a CORS preflight)."""
    has_body = request.content_length or "transfer-encoding" in request.headers
    if request.method in ("POST", "PUT", "PATCH") and has_body:
        if request.mimetype != "application/json":
            raise APIError(
                415,
                f"Content-Type must be application/json, not {request.content_type!r}",
                code="unsupported_media_type",
            )


def install_error_handlers(app: QuartTrio, max_body_bytes: int) -> None:
    @app.errorhandler(APIError)
    async def on_api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
                408: "request_timeout", 415: "unsupported_media_type"}  # fmt: skip
        message = error.description or error.name
        if error.code == 413:
            message = f"request body larger than the limit of {max_body_bytes} bytes"
        answer = APIError(error.code or 400, message, code=code.get(error.code or 0))
        # Routing errors come before any handler read the body: do not keep the connection.
        answer.close_connection = bool(request.content_length) or (
            "transfer-encoding" in request.headers
        )
        return error_response(answer)

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request")
        return error_response(
            APIError(
                500,
                f"internal error: {type(error).__name__}",
                type="server_error",
                code="internal_error",
            )
        )
