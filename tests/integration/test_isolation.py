"""`inferflux run --isolate scheduler,policy`: the scheduler and the policy actor each in
an OS process of its own, over nng ipc. SIGKILL of either process mid-stream: its
supervisor restarts it and every stream continues with exactly the text of an undisturbed
run (the ingress resubmits what it has delivered; the worker recomputes the rest)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import MODEL_ID, RunningServer, serving
from tests.streams import reference_texts, stream_chat

pytestmark = pytest.mark.model

QUESTIONS = [
    "Write a story about a red fox.",
    "Explain how rain forms.",
    "Describe a castle.",
    "Plan a story.",
]
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    """A server with both isolated and an API-key store, so the policy actor is used."""
    directory = tmp_path_factory.mktemp("isolated-store")
    store = PolicyStore.open(directory / "p.store", b"isolation test", create=True)
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        request = ops.KeyRequest(name="user", scopes=["generate", "models:read"])
        keys["user"], _, data = ops.create_key(data, request)
        return data

    store.update(fill)
    (directory / "key").write_text("isolation test")
    servers = serving(
        tmp_path_factory, "isolated", 4, "--isolate", "scheduler,policy",
        "--policy-store", str(directory / "p.store"),
        "--policy-key-file", str(directory / "key"),
    )  # fmt: skip
    server = next(servers)
    try:
        yield server, keys["user"]
    finally:
        servers.close()


def find(tree: dict[str, Any], name: str) -> dict[str, Any] | None:
    if tree.get("name") == name:
        return tree
    for child in tree.get("children", []):
        found = find(child, name)
        if found is not None:
            return found
    return None


def actor(server: RunningServer, name: str) -> dict[str, Any]:
    tree = httpx.get(f"{server.url}/debug/actors", timeout=10).json()
    found = find(tree, name)
    assert found is not None, tree
    return found


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def process_of(server: RunningServer, name: str) -> int:
    """The pid of the isolated actor `name`, checked against its command line."""
    info = actor(server, name)
    assert info["kind"] == "process" and info["state"] == "running", info
    pid = info["pid"]
    assert pid and pid != server.process.pid
    assert f"inferflux-{name}" in cmdline(pid)
    return pid


async def streams_across_a_kill(server: RunningServer, key: str, victim: str) -> None:
    """Reference texts, then the same requests streamed while `victim`'s process is
    SIGKILLed ~30 tokens in: identical texts, finish_reason and usage."""
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    kwargs = dict(
        model=MODEL_ID, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    reference = await reference_texts(client, QUESTIONS, **kwargs)
    first_pid = process_of(server, victim)
    received: dict[str, list[str]] = {q: [] for q in QUESTIONS}
    finish: dict[str, list[Any]] = {q: ["", -1] for q in QUESTIONS}

    async def stream(q: str) -> None:
        usage: list[int] = []
        finish[q][0] = await stream_chat(client, q, received[q], usage, **kwargs)
        if usage:
            finish[q][1] = usage[-1]

    async with trio.open_nursery() as nursery:
        for q in QUESTIONS:
            nursery.start_soon(stream, q)
        with trio.fail_after(120):
            while min(len(v) for v in received.values()) < 30:
                await trio.sleep(0.01)
        os.kill(first_pid, signal.SIGKILL)
        before_kill = {q: "".join(parts) for q, parts in received.items()}

    for q in QUESTIONS:
        assert len(before_kill[q]) > 20
        assert reference[q].startswith(before_kill[q])
        assert "".join(received[q]) == reference[q]
        assert finish[q] == ["length", MAX_TOKENS]  # none lost, none doubled
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = actor(server, victim)
        if info["state"] == "running" and info["pid"] not in (0, first_pid):
            break
        await trio.sleep(0.1)
    assert process_of(server, victim) != first_pid
    assert server.metric("inferflux:actor_restarts_total", actor=victim) >= 1


async def test_the_isolated_actors_run_in_their_own_processes(
    isolated: tuple[RunningServer, str],
) -> None:
    server, key = isolated
    scheduler, policy = process_of(server, "scheduler"), process_of(server, "policy")
    assert len({scheduler, policy, server.process.pid}) == 3
    # The scheduler's numbers cross its link as reports and reach /metrics.
    before = server.metric("inferflux:generation_tokens_total")
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    reply = await client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=5)
    assert reply.usage.completion_tokens == 5
    deadline = time.monotonic() + 5
    while server.metric("inferflux:generation_tokens_total") < before + 5:
        assert time.monotonic() < deadline, "no MeterReport reached /metrics"
        await trio.sleep(0.05)
    # Its details reach the tree through the link (readiness, queues) every 0.25 s.
    # The snapshot read first may predate the request (running 0, steps 0), so wait
    # for one that has seen the steps.
    deadline = time.monotonic() + 5
    while (details := actor(server, "scheduler")["details"]).get("steps", 0) < 5:
        assert time.monotonic() < deadline, details
        await trio.sleep(0.05)
    while (details := actor(server, "scheduler")["details"]).get("running") != 0:
        assert time.monotonic() < deadline, details
        await trio.sleep(0.05)
    assert details["ready"] == 1 and details["steps"] >= 5
    # The isolated policy still enforces the store.
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401
    wrong = {"authorization": "Bearer sk-wrong"}
    assert httpx.get(f"{server.url}/v1/models", headers=wrong, timeout=10).status_code == 401


async def test_sigkill_of_the_scheduler_process_mid_stream(
    isolated: tuple[RunningServer, str],
) -> None:
    server, key = isolated
    await streams_across_a_kill(server, key, "scheduler")


async def test_sigkill_of_the_policy_process_mid_stream(
    isolated: tuple[RunningServer, str],
) -> None:
    server, key = isolated
    await streams_across_a_kill(server, key, "policy")
    # The restarted policy process decides again: the key works, no key does not.
    models = httpx.get(
        f"{server.url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert models.status_code == 200
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401


def test_isolate_names_only_what_can_be_isolated(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "inferflux", "run", "--isolate", "scheduler,ingress"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "server.isolate" in done.stderr, done.stderr
