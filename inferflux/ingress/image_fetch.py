"""Image URLs fetched from listed hosts only (issue 16, `server.image_fetch`).

A server that fetches any URL a client names is a request-forgery tool: the client reads
(or probes) whatever the server can reach, cloud metadata addresses and loopback services
included. So the default fetches nothing, and an operator lists the host names images may
come from. The host is checked on the URL as written, before anything is resolved or
connected; redirects are not followed at all (a listed host redirecting elsewhere would
reopen the hole, and following only redirects inside the list buys little); the
environment's proxy settings are ignored (a proxy would be a host not on the list).

The body is read in chunks and the fetch stops as soon as it passes `max_bytes` (the
data-URI cap), so a huge or endless body costs at most that much memory; a declared
Content-Length over the cap stops it before the body. `timeout_s` bounds connecting and
each read, and the whole fetch is checked against it after every chunk, so a body that
trickles in ends within about twice `timeout_s`. Every failure is the client's 400 naming
the part: it is the client's URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from .errors import APIError
from .limits import MAX_IMAGE_BYTES


@dataclass(frozen=True)
class ImageFetch:
    """What the server may fetch: host names (any port), how long, how much."""

    hosts: tuple[str, ...] = ()
    timeout_s: float = 10.0
    max_bytes: int = MAX_IMAGE_BYTES

    def __post_init__(self) -> None:  # as urlsplit gives a URL's host: lower case
        object.__setattr__(self, "hosts", tuple(h.rstrip(".").lower() for h in self.hosts))

    def fetch(self, url: str, param: str) -> bytes:
        """The body at `url` (http or https, on a listed host). Blocking: run it in a
        thread, as the image decoding is."""
        target = self._allowed(url, param)
        host = target.host
        deadline = time.monotonic() + self.timeout_s
        try:
            with httpx.Client(
                follow_redirects=False, timeout=self.timeout_s, trust_env=False
            ) as client:
                # identity: a compressed body could inflate past the cap within one chunk
                headers = {"accept": "image/*", "accept-encoding": "identity"}
                with client.stream("GET", target, headers=headers) as reply:
                    return self._read(reply, host, deadline, param)
        except httpx.TimeoutException:
            raise _bad(f"fetching the image from {host!r} took over {self.timeout_s:g} s",
                       param) from None  # fmt: skip
        except httpx.HTTPError as exc:
            raise _bad(
                f"the image could not be fetched from {host!r} ({type(exc).__name__})", param
            ) from None

    def _allowed(self, url: str, param: str) -> httpx.URL:
        """The URL as httpx parses it (the parser that connects is the one checked: no
        two readings of `user@host\\@other`), when its host is listed."""
        try:
            target = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise _bad("the image URL is malformed", param) from None
        host = target.host.rstrip(".").lower()
        if target.scheme not in ("http", "https") or not host:
            raise _bad("an image URL must be http(s)://host/...", param)
        if not self.hosts:
            raise _bad(
                "image URLs are not fetched by this server (server.image_fetch lists no "
                "hosts): send the image inline as a data: URI (data:image/png;base64,...), "
                "or have the operator list the host in server.image_fetch",
                param,
                code="unsupported_content",
            )
        if host not in self.hosts:
            raise _bad(
                f"image URLs are fetched only from the hosts in server.image_fetch; {host!r} "
                "is not one of them: list it there, or send the image inline as a data: URI",
                param,
                code="unsupported_content",
            )
        return target

    def _read(self, reply: httpx.Response, host: str, deadline: float, param: str) -> bytes:
        if reply.is_redirect:
            raise _bad(f"{host!r} answered with a redirect ({reply.status_code}); image "
                       "URLs are not followed: send the final URL", param)  # fmt: skip
        if reply.status_code != 200:
            raise _bad(f"fetching the image from {host!r} answered HTTP {reply.status_code}",
                       param)  # fmt: skip
        declared = reply.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(param)
        body = bytearray()
        for chunk in reply.iter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise self._too_large(param)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the whole fetch took too long")
        return bytes(body)

    def _too_large(self, param: str) -> APIError:
        return _bad(f"the image is larger than {self.max_bytes} bytes", param)


def _bad(message: str, param: str, code: str = "invalid_image") -> APIError:
    return APIError(400, message, param=param, code=code)
