"""Ollama's `keep_alive`: how long a model stays loaded after a request, as the request
says it."""

from __future__ import annotations

import math
from typing import Any

from ..ingress.errors import APIError


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: seconds, or a duration ("5m", "1h", "30s"), 0, or a negative
    number for "forever" (None: use the server's default)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return math.inf if value < 0 else float(value)
    text = str(value).strip().lower()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].lstrip("-").replace(".", "", 1).isdigit():
            number = float(text[: -len(unit)])
            return math.inf if number < 0 else number * units[unit]
    try:
        number = float(text)
    except ValueError:
        raise APIError(
            400,
            f"keep_alive must be seconds or a duration like 5m, not {value!r}",
            param="keep_alive",
            code="invalid_value",
        ) from None
    return math.inf if number < 0 else number
