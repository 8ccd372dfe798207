"""Guardrails: a regex blocklist on prompts and outputs, and an optional OPA decision.

The blocklist is compiled once at start (a bad pattern is a startup error). OPA is asked
with its REST data API, `POST <opa_url>` with `{"input": {...}}`, and must answer
`{"result": true|false}` or `{"result": {"allow": bool, "reason": str}}` within
`opa_timeout_s`; a timeout, a transport error or any other answer follows the configured
fail-open / fail-closed choice, and is logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import httpx
import trio

log = logging.getLogger("inferflux.policy")


class Blocklist:
    def __init__(self, patterns: list[str]) -> None:
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(
                    f"policy.blocklist pattern {pattern!r} is invalid: {exc}"
                ) from None
        self.patterns = compiled

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def first_match(self, text: str) -> str | None:
        """The pattern (its source, never the matched text) that matches, if any."""
        for pattern in self.patterns:
            if pattern.search(text):
                return pattern.pattern
        return None


@dataclass(frozen=True)
class OPAVerdict:
    allowed: bool
    reason: str
    unavailable: bool = False  # no answer: the fail-open/closed choice was applied


class OPAClient:
    def __init__(self, url: str, timeout_s: float, fail_open: bool) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"policy.opa_url must be an http(s) URL, got {url!r}")
        self.url, self.timeout_s, self.fail_open = url, timeout_s, fail_open
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def ask(self, facts: dict[str, Any]) -> OPAVerdict:
        try:
            with trio.fail_after(self.timeout_s):
                response = await self._client.post(self.url, json={"input": facts})
            response.raise_for_status()
            result = response.json().get("result")
        except (trio.TooSlowError, httpx.HTTPError, ValueError, AttributeError) as exc:
            return self._no_answer(f"{type(exc).__name__}: {exc}")
        if isinstance(result, bool):
            return OPAVerdict(result, "" if result else "denied by policy")
        if isinstance(result, dict) and isinstance(result.get("allow"), bool):
            reason = result.get("reason")
            return OPAVerdict(result["allow"], reason if isinstance(reason, str) else "")
        # An undefined rule answers {} (no result): treat like no answer, not like "allow".
        return self._no_answer(f"unexpected answer {result!r}")

    def _no_answer(self, why: str) -> OPAVerdict:
        log.warning(
            "OPA at %s gave no decision (%s): failing %s",
            self.url,
            why,
            "open" if self.fail_open else "closed",
        )
        return OPAVerdict(self.fail_open, f"policy engine unavailable ({why})", unavailable=True)

    async def aclose(self) -> None:
        await self._client.aclose()
