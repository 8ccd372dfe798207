"""server.image_fetch (ingress/image_fetch.py) against a real local HTTP server: only
listed hosts, no redirects, the size cap enforced while the body streams, a deadline on
the whole fetch; every failure a 400 naming the part."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from inferflux.ingress.errors import APIError
from inferflux.ingress.image_fetch import ImageFetch
from inferflux.ingress.images import read_image
from tests.image_server import IMAGE, image_server

PARAM = "messages[0].content[0].image_url.url"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with image_server() as url:
        yield url


def refused(fetch: ImageFetch, url: str) -> APIError:
    with pytest.raises(APIError) as caught:
        fetch.fetch(url, PARAM)
    assert caught.value.status == 400 and caught.value.param == PARAM
    return caught.value


def test_a_listed_host_is_fetched_and_decodes_as_its_data_uri(base: str) -> None:
    fetch = ImageFetch(("127.0.0.1",), timeout_s=5)
    assert fetch.fetch(f"{base}/cat.png", PARAM) == IMAGE
    inline = read_image("data:image/png;base64," + base64.b64encode(IMAGE).decode(), PARAM)
    assert read_image(f"{base}/cat.png", PARAM, fetch).digest == inline.digest


@pytest.mark.parametrize(
    "hosts, url, says",
    [
        ((), "/cat.png", "not fetched"),
        (("example.com",), "/cat.png", "'127.0.0.1' is not one of them"),
        (("127.0.0.1",), "/redirect", "redirect"),
        (("127.0.0.1",), "/missing", "HTTP 404"),
        (("127.0.0.1",), "/huge", "larger than"),
        (("127.0.0.1",), "/huge-declared", "larger than"),
    ],
)
def test_refusals(base: str, hosts: tuple[str, ...], url: str, says: str) -> None:
    assert says in refused(ImageFetch(hosts, timeout_s=5), base + url).message


def test_hosts_are_compared_as_urls_write_them() -> None:
    fetch = ImageFetch(("Images.Example.COM.",))
    assert fetch.hosts == ("images.example.com",)
    # not listed: refused before anything is resolved or connected
    assert "not one of them" in refused(fetch, "http://evil.example.com/x.png").message
    assert "not one of them" in refused(fetch, "http://images.example.com@evil.test/").message
    assert "http(s)" in refused(fetch, "ftp://images.example.com/x.png").message
    assert "malformed" in refused(fetch, "http://images.example.com:99x/").message


@pytest.mark.parametrize("path", ["/slow", "/stall"])
def test_a_slow_or_stalled_body_times_out(base: str, path: str) -> None:
    started = time.monotonic()
    error = refused(ImageFetch(("127.0.0.1",), timeout_s=1), base + path)
    assert "took over 1 s" in error.message
    assert time.monotonic() - started < 3


def test_a_refused_connection_is_a_400() -> None:
    error = refused(ImageFetch(("127.0.0.1",), timeout_s=2), "http://127.0.0.1:9/x.png")
    assert "could not be fetched" in error.message
