"""Shared fixtures: a real server process on the real default model."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from inferflux.model.store import default_model_path
from inferflux.testing import dies_with_parent, free_port, stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The wire check (docs/actors.md): in every test, in-process messages, replies, stream
# items and refusals to an actor with a protocol are encoded and decoded by that protocol,
# as a link would, so the suite proves each protocol crosses a wire. Server processes the
# tests start inherit it. ACTORS_WIRE_CHECK=0 turns it off.
os.environ.setdefault("ACTORS_WIRE_CHECK", "1")
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    log_path: str
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """Prometheus samples as {'name{labels}': value}."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for key, value in self.metrics().items():
            base = key.split("{", 1)[0]
            if base == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
        return total

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()


def start_server(
    tmp_dir: str,
    *args: str,
    timeout_s: float = 120,
    verify: str | None = None,
    cert: tuple[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> RunningServer:
    """Start `inferflux run` and wait until it is ready. `verify`: serving HTTPS, the CA
    to check it with (and `cert`, a client certificate and key, for mutual TLS). `env`:
    set on top of this process's environment."""
    port = free_port()
    log_path = os.path.join(tmp_dir, f"server-{port}.log")
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "inferflux", "run", "--port", str(port), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        preexec_fn=dies_with_parent,
    )
    server = RunningServer(process, port, log_path, "https" if verify else "http")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            trust = tls_context(verify, cert) if verify else True
            probe = httpx.get(f"{server.url}/readyz", timeout=1, verify=trust)
            if probe.status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"server not ready in {timeout_s}s:\n{server.log()}")


def tls_context(ca: str, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """Trust `ca`; present `cert` (certificate, key) when given."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def stop_server(server: RunningServer) -> None:
    stop_process(server.process)


@pytest.fixture(scope="session")
def model_path() -> str:
    return str(default_model_path(quiet=True))


@pytest.fixture(scope="session")
def server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the API tests: 8 slots, 1024-token windows."""
    yield from serving(tmp_path_factory, "server", n_parallel=8)


def serving(
    factory: pytest.TempPathFactory,
    name: str,
    n_parallel: int,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Start a server (1024-token windows, 2 threads), yield it, stop it."""
    running = start_server(
        str(factory.mktemp(name)),
        "--n-parallel",
        str(n_parallel),
        "--ctx-size",
        "1024",
        "--threads",
        "2",
        *extra,
        env=env,
    )
    try:
        yield running
    finally:
        stop_server(running)
