"""The HTTP edge (issue 13): HTTPS and mutual TLS through the official client, browser
origins and DNS rebinding, request deadlines, a cap on open requests, and a connection
storm in which every connection gets an HTTP answer."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trio

from tests.conftest import (
    MODEL_ID,
    RunningServer,
    serving,
    start_server,
    stop_server,
    tls_context,
)
from tests.policy_support import TLSFiles, make_tls

pytestmark = pytest.mark.model

ASK = [{"role": "user", "content": "Hi"}]
LONG = {"max_tokens": 900, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def https_server(tmp_path: Path, tls: TLSFiles, *extra: str, mutual: bool = False):  # noqa: ANN201
    cert = (tls.client_cert, tls.client_key) if mutual else None
    return start_server(
        str(tmp_path), "--n-parallel", "2", "--ctx-size", "512", "--threads", "2",
        "--tls-cert", tls.cert, "--tls-key", tls.key, *extra, verify=tls.ca, cert=cert,
    )  # fmt: skip


def test_https_through_the_official_client(tmp_path: Path, tls: TLSFiles) -> None:
    server = https_server(tmp_path, tls)
    try:
        trusted = httpx.Client(verify=tls_context(tls.ca))
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", http_client=trusted)
        reply = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=2)
        assert reply.usage.completion_tokens > 0
        with pytest.raises(httpx.ConnectError):  # a certificate it cannot check: refused
            httpx.get(f"{server.url}/livez")
        with pytest.raises(httpx.HTTPError):  # and plain HTTP gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/livez", timeout=5)
    finally:
        stop_server(server)


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, tls: TLSFiles) -> None:
    server = https_server(tmp_path, tls, "--tls-client-ca", tls.ca, mutual=True)
    try:
        with_cert = httpx.Client(verify=tls_context(tls.ca, (tls.client_cert, tls.client_key)))
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", http_client=with_cert)
        assert client.models.list().data[0].id == MODEL_ID
        with pytest.raises((httpx.HTTPError, ssl.SSLError)):
            httpx.get(f"{server.url}/v1/models", verify=tls_context(tls.ca), timeout=5)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    config = tmp_path_factory.mktemp("edge") / "edge.toml"
    config.write_text(
        "[server]\n"
        'cors_origins = ["https://app.example"]\n'
        'allowed_hosts = ["inferflux.internal"]\n'
        "request_timeout_s = 4.0\n"
        "max_open_requests = 24\n"
        "[scheduler]\nmax_waiting = 8\n"
    )
    yield from serving(tmp_path_factory, "edge", 2, "--config", str(config))


def test_web_origins_and_host_names(edge: RunningServer, server: RunningServer) -> None:
    chat = {"model": MODEL_ID, "messages": ASK, "max_tokens": 1}
    url = f"{edge.url}/v1/chat/completions"
    evil = httpx.post(url, json=chat, headers={"origin": "https://evil.example"}, timeout=30)
    assert evil.status_code == 403 and evil.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in evil.headers
    allowed = httpx.post(url, json=chat, headers={"origin": "https://app.example"}, timeout=30)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    preflight = httpx.options(url, headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    })  # fmt: skip
    assert preflight.status_code in (200, 204)
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    # The default server has no origins: any page is refused.
    page = httpx.get(f"{server.url}/v1/models", headers={"origin": "http://localhost:3000"})
    assert page.status_code == 403
    # Bound to loopback: a name that is not loopback (a rebinding DNS name) is refused.
    for host, status in (("evil.example", 403), ("localhost", 200), ("inferflux.internal", 200)):
        reply = httpx.get(f"{edge.url}/v1/models", headers={"host": f"{host}:{edge.port}"})
        assert reply.status_code == status, (host, reply.text)
    rebinding = httpx.get(f"{edge.url}/v1/models", headers={"host": "evil.example"})
    assert rebinding.json()["error"]["code"] == "host_not_allowed"


def test_a_request_past_its_deadline_ends_with_timeout_and_frees_its_slot(
    edge: RunningServer,
) -> None:
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as whole:
        client.chat.completions.create(model=MODEL_ID, messages=ASK, extra_body=LONG)
    assert whole.value.status_code == 504 and whole.value.body["code"] == "timeout"
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, stream=True, extra_body=LONG
    )
    with pytest.raises(openai.APIError) as streamed:
        for _ in stream:
            pass
    assert "deadline" in str(streamed.value)
    deadline = time.monotonic() + 5  # the Abort reaches the scheduler a moment later
    while edge.metric("inferflux:num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert edge.metric("inferflux:num_requests_running") == 0
    reply = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=2)
    assert reply.usage.completion_tokens > 0


async def test_a_storm_of_connections_gets_an_http_answer_each(edge: RunningServer) -> None:
    """500 simultaneous non-streaming requests: each is answered, 200 or a 429/503 that
    says when to retry (the open-request cap, the waiting queue); none is left unanswered."""
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=600, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:

        async def one() -> None:
            body = {"model": MODEL_ID, "messages": ASK, "max_tokens": 2}
            reply = await client.post(f"{edge.url}/v1/chat/completions", json=body)
            if reply.status_code != 200:
                assert reply.headers.get("retry-after"), reply.text
            statuses.append(reply.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(500):
                nursery.start_soon(one)
    assert len(statuses) == 500
    assert set(statuses) <= {200, 429, 503} and statuses.count(200) > 0
    assert statuses.count(503) > 0  # the cap of 24 open requests did its part


def test_the_body_has_a_deadline_and_a_stream_does_not(tmp_path: Path) -> None:
    """server.read_timeout_s bounds the wait for a request's body (408), and only that: a
    stream the client reads for longer than it, sending nothing, runs to its end. (It once
    was hypercorn's read timeout, which timed every read of the connection and cut every
    stream longer than 30 s without a word in the log.)"""
    config = tmp_path / "read.toml"
    config.write_text("[server]\nread_timeout_s = 1.0\n")
    server = start_server(str(tmp_path), "--n-parallel", "1", "--ctx-size", "1024",
                          "--threads", "2", "--config", str(config))  # fmt: skip
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        started = time.monotonic()
        stream = client.chat.completions.create(
            model=MODEL_ID, messages=ASK, stream=True, extra_body=LONG
        )
        chunks = [chunk for chunk in stream if chunk.choices]
        took = time.monotonic() - started
        assert chunks[-1].choices[0].finish_reason == "length"
        assert took > 3 * 1.0, f"the stream took {took:.1f}s: too short to show anything"
        # A body that stalls after its head: 408 in the OpenAI shape, about a second later.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            waited = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += raw.recv(65536)
            head, _, body = answer.decode().partition("\r\n\r\n")
            length = int(head.lower().split("content-length:")[1].split()[0])
            while len(body.encode()) < length:
                body += raw.recv(65536).decode()
            assert time.monotonic() - waited < 5
        assert head.startswith("HTTP/1.1 408"), answer
        assert json.loads(body)["error"]["code"] == "request_timeout", body
        assert client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=2)
    finally:
        stop_server(server)
