"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import msgspec


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.retry_after_s = param, code, retry_after_s

    def body(self) -> bytes:
        return msgspec.json.encode(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )

    close_connection = False
    """Set for an answer given before the request's body was read: the body is still on
    the connection, where it would be taken for the next request's start (a keep-alive
    client then waits forever), so the connection closes after the answer."""

    def headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.retry_after_s is not None:
            headers["retry-after"] = str(self.retry_after_s)
        if self.close_connection:
            headers["connection"] = "close"
        return headers


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error(error: APIError) -> dict[str, object]:
    """The error in the Anthropic Messages API's shape (HTTP body and stream event)."""
    kind = _ANTHROPIC_TYPES.get(error.status, "invalid_request_error")
    if error.status >= 500 and error.status not in _ANTHROPIC_TYPES:
        kind = "api_error"
    message = error.message if error.param is None else f"{error.param}: {error.message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def from_decode_error(exc: msgspec.DecodeError) -> APIError:
    """Turn msgspec's message ("Expected `int`, got `str` - at `$.max_tokens`") into a
    400 naming the parameter."""
    text = str(exc)
    param = None
    if " - at `$" in text:
        text_part, _, path = text.partition(" - at `$")
        param = path.rstrip("`").lstrip(".") or None
        text = f"{text_part} (at {param})" if param else text_part
    elif text.startswith("JSON is malformed") or "malformed" in text.lower():
        text = f"request body is not valid JSON: {text}"
    if text.startswith("Object missing required field `"):
        field = text.split("`")[1]  # the missing field is the parameter to name
        param = f"{param}.{field}" if param else field
    return APIError(400, text, param=param, code="invalid_value" if param else "invalid_json")
