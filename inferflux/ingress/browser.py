"""What a web browser could be made to do: the protections against a page the user visits.

CORS. Without `server.cors_origins` no CORS header is ever sent and a request that carries
an `Origin` header (browsers add it to cross-origin requests, and to same-origin POSTs) is
refused: otherwise any page could make a visitor's browser use the server, with auth off or
with the visitor's own credentials. Listed origins get the CORS headers and their
preflights answered.

DNS rebinding. A page can point a name it owns at 127.0.0.1 and reach a loopback server as
"same origin", sending no Origin at all. While bound to a loopback address the server
therefore accepts only loopback Host names (and `server.allowed_hosts`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from .errors import APIError

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
ALLOWED_HEADERS = "authorization, content-type, x-api-key, anthropic-version, traceparent"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The Host header's name, without the port (IPv6 literals keep their brackets off)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class BrowserGuard:
    def __init__(self, bind_host: str, origins: list[str], allowed_hosts: list[str]) -> None:
        self.check_host = is_loopback(bind_host)
        self.any_origin = "*" in origins
        self.origins = {o.rstrip("/").lower() for o in origins}
        self.hosts = {h.lower() for h in allowed_hosts}

    def check(self, headers: Mapping[str, str]) -> None:
        """Raise the 403 a request from the wrong place gets."""
        if self.check_host:
            name = host_name(headers.get("host", "")).lower()
            if not is_loopback(name) and name not in self.hosts:
                raise APIError(
                    403,
                    f"Host {name!r} is not served here (this server is bound to loopback; "
                    "add the name to server.allowed_hosts)",
                    type="permission_error",
                    code="host_not_allowed",
                )
        origin = headers.get("origin")
        if origin is not None and not self.allows(origin):
            raise APIError(
                403,
                f"requests from the web origin {origin!r} are not allowed (server.cors_origins)",
                type="permission_error",
                code="origin_not_allowed",
            )

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin.rstrip("/").lower() in self.origins

    def cors_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The CORS response headers for an allowed origin ({} otherwise)."""
        origin = headers.get("origin")
        if origin is None or not self.allows(origin):
            return {}
        answer = {"access-control-allow-origin": origin, "vary": "Origin"}
        if headers.get("access-control-request-method"):  # a preflight
            answer |= {
                "access-control-allow-methods": "GET, POST, PUT, DELETE, OPTIONS",
                "access-control-allow-headers": ALLOWED_HEADERS,
                "access-control-max-age": "600",
            }
        return answer
