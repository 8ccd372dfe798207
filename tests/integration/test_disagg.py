"""Disaggregated prefill/decode (issue 14), real processes on loopback: a prefill node
(`--role prefill --cluster-listen`) and a decode node (`--role decode --prefill`) serve the
official client with the text a unified server gives, greedy, seeded and streamed; the
prefill node did the prompts (its metrics) and serves no OpenAI API. SIGKILL the prefill
node and the decode node goes on alone: the same text, prefilled locally, no error.
Across network namespaces: tests/integration/test_hosts_disagg.py."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from inferflux.kvcache import staging
from inferflux.testing import free_port
from tests.conftest import MODEL_ID, RunningServer, start_server, stop_server
from tests.integration.test_isolation import actor

pytestmark = pytest.mark.model

SETTINGS = ("--n-parallel", "2", "--ctx-size", "512", "--threads", "1")
TOPICS = ["a lighthouse keeper", "a river delta", "an old clock tower", "a night market"]


def prompt(topic: str) -> str:
    """~150 tokens: over the test's min_prefill_tokens (64), so it goes remote."""
    notes = " ".join(f"Note {i}: {topic} is worth a line of its own." for i in range(12))
    return f"Here are some notes. {notes} Now write two sentences about {topic}."


def cluster_config(tmp: Path) -> str:
    path = tmp / "cluster.toml"
    path.write_text("[cluster]\nmin_prefill_tokens = 64\nheartbeat_s = 0.25\ndown_after_s = 1.5\n")
    return str(path)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningServer]]:
    tmp = tmp_path_factory.mktemp("disagg")
    config = cluster_config(tmp)
    door = f"tcp://127.0.0.1:{free_port()}"
    started: dict[str, RunningServer] = {}
    try:
        started["unified"] = start_server(str(tmp), *SETTINGS)
        started["prefill"] = start_server(
            str(tmp), *SETTINGS, "--role", "prefill", "--cluster-listen", door, "--config", config
        )
        started["decode"] = start_server(
            str(tmp), *SETTINGS, "--role", "decode", "--prefill", door, "--config", config
        )
        deadline = time.monotonic() + 30
        while "joined as prefill-0" not in started["decode"].log():
            assert time.monotonic() < deadline, started["decode"].log()
            time.sleep(0.1)
        yield started
    finally:
        for server in started.values():
            stop_server(server)


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)


def chat(server: RunningServer, topic: str, stream: bool = False, **sampling) -> str:
    request = dict(
        model=MODEL_ID,
        messages=[{"role": "user", "content": prompt(topic)}],
        max_tokens=40,
        **sampling,
    )
    if not stream:
        return client(server).chat.completions.create(**request).choices[0].message.content
    chunks = client(server).chat.completions.create(stream=True, **request)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def remote(server: RunningServer, path: str) -> float:
    return server.metric("inferflux:disagg_requests_total", path=path)


def test_decode_with_a_prefill_node_gives_the_unified_text(nodes) -> None:
    unified, prefill, decode = nodes["unified"], nodes["prefill"], nodes["decode"]
    cases = [
        (TOPICS[0], False, {"temperature": 0}),
        (TOPICS[1], False, {"temperature": 0.9, "seed": 7}),
        (TOPICS[2], True, {"temperature": 0}),
    ]
    computed_before = prefill.metric("inferflux:prompt_tokens_computed_total")
    for topic, stream, sampling in cases:
        expected = chat(unified, topic, stream, **sampling)
        assert chat(decode, topic, stream, **sampling) == expected, topic
    assert remote(decode, "remote") == 3 and remote(decode, "fallback") == 0
    assert prefill.metric("inferflux:prompt_tokens_computed_total") - computed_before > 3 * 100
    assert decode.metric("inferflux:kv_transfer_bytes_total") > 3 * 100 * 20_000  # ~23 KB a token
    # One host: each decode worker mapped the prefill node's staging file (nothing pulled),
    # and every file was released once loaded.
    assert actor(decode, "kvcache")["details"]["pulled"] == 0
    deadline = time.monotonic() + 5
    while any(name.startswith(staging.PREFIX) for name in os.listdir(staging.directory())):
        assert time.monotonic() < deadline, os.listdir(staging.directory())
        time.sleep(0.1)
    # A short prompt stays on the decode node.
    short = client(decode).chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert short.choices[0].finish_reason and remote(decode, "local") == 1
    # The prefill node answers health and metrics, not the OpenAI API.
    assert httpx.get(f"{prefill.url}/readyz").status_code == 200
    refused = httpx.get(f"{prefill.url}/v1/models")
    assert refused.status_code == 404 and "error" in refused.json()


def test_a_dead_prefill_node_costs_a_local_prefill_and_a_new_one_is_used(
    nodes, tmp_path: Path
) -> None:
    unified, prefill, decode = nodes["unified"], nodes["prefill"], nodes["decode"]
    remote_before = remote(decode, "remote")
    os.kill(prefill.process.pid, signal.SIGKILL)
    prefill.process.wait(10)
    topic = TOPICS[3]
    assert chat(decode, topic, temperature=0) == chat(unified, topic, temperature=0)
    assert remote(decode, "fallback") == 1 and remote(decode, "remote") == remote_before
    # A prefill node back at the same door: the decode node joins it again and, once the
    # failed peer's time out is over (10 s), uses it.
    door = decode.log().split("prefill node ")[1].split(" joined")[0]
    nodes["prefill"] = start_server(
        str(tmp_path), *SETTINGS, "--role", "prefill", "--cluster-listen", door,
        "--config", cluster_config(tmp_path),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while f"joined {door} again" not in decode.log():
        assert time.monotonic() < deadline, decode.log()
        time.sleep(0.1)
    time.sleep(10)
    topic = "a mountain pass"
    assert chat(decode, topic, temperature=0) == chat(unified, topic, temperature=0)
    assert remote(decode, "remote") == remote_before + 1
