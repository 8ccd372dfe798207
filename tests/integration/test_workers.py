"""`--workers 2`: two device-worker processes behind one scheduler (issue 14). Streams
spread over both; a SIGKILLed worker costs only a pause: every text is exactly the
undisturbed run's (its streams are recomputed, the other worker's run on), and the
other worker process is untouched."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.integration.test_isolation import find
from tests.streams import reference_texts, stream_chat

pytestmark = pytest.mark.model

QUESTIONS = [
    "Write a story about a red fox.",
    "Explain how rain forms.",
    "Describe a castle.",
    "Plan a garden.",
]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory):
    # Two GPUs named to the node (a CPU build ignores them; no GPU here): one each.
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1"}
    yield from serving(tmp_path_factory, "workers", 2, "--workers", "2", env=gpus)


def worker_pids(server: RunningServer) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "inferflux-worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    return sorted(int(pid) for pid in out)


def worker_environment(pid: int) -> tuple[str, dict[str, str]]:
    """A worker process's actor name and environment, as the kernel has them."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(v.split("=", 1) for v in f.read().decode().split("\0") if "=" in v)
    return argv[argv.index("--name") + 1], env


def test_each_worker_gets_its_own_gpu(two_workers: RunningServer) -> None:
    seen = dict(worker_environment(pid) for pid in worker_pids(two_workers))
    assert {name: env.get("CUDA_VISIBLE_DEVICES") for name, env in seen.items()} == {
        "worker-0": "0",
        "worker-1": "1",
    }


def scheduler_details(server: RunningServer) -> dict:
    tree = httpx.get(f"{server.url}/debug/actors", timeout=10).json()
    found = find(tree, "scheduler")
    assert found is not None, tree
    return found["details"]


def messages_in(server: RunningServer, name: str) -> int:
    tree = httpx.get(f"{server.url}/debug/actors", timeout=10).json()
    found = find(tree, name)
    assert found is not None, tree
    return found["messages_in"]


async def test_embeddings_spread_over_both_workers_with_the_same_vectors(
    two_workers: RunningServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{two_workers.url}/v1", api_key="x", max_retries=0)
    before = {name: messages_in(two_workers, name) for name in ("worker-0", "worker-1")}
    vectors = [
        (await client.embeddings.create(model=MODEL_ID, input="a red fox")).data[0].embedding
        for _ in range(4)
    ]
    assert all(vector == vectors[0] for vector in vectors)  # whichever worker embedded it
    for name, count in before.items():  # one piece each in turn: two each
        assert messages_in(two_workers, name) >= count + 2, name


async def test_streams_spread_over_two_workers_and_survive_one_being_killed(
    two_workers: RunningServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{two_workers.url}/v1", api_key="x", max_retries=0)
    kwargs = dict(model=MODEL_ID, max_tokens=120, temperature=0, extra_body={"ignore_eos": True})
    reference = await reference_texts(client, QUESTIONS, **kwargs)
    pids = worker_pids(two_workers)
    assert len(pids) == 2, pids
    received: dict[str, list[str]] = {q: [] for q in QUESTIONS}
    finish: dict[str, str] = {}

    async def stream(q: str) -> None:
        finish[q] = await stream_chat(client, q, received[q], **kwargs)

    async with trio.open_nursery() as nursery:
        for q in QUESTIONS:
            nursery.start_soon(stream, q)
        with trio.fail_after(60):
            while min(len(v) for v in received.values()) < 20:
                await trio.sleep(0.01)
        # Four streams, two slots each: both workers have two.
        assert scheduler_details(two_workers)["running_by_worker"] == "2,2"
        os.kill(pids[1], signal.SIGKILL)

    for q in QUESTIONS:
        assert "".join(received[q]) == reference[q], q
        assert finish[q] == "length"
    with trio.fail_after(60):  # the killed one is restarted; the other never touched
        while (
            scheduler_details(two_workers)["running_by_worker"] != "0,0"
            or len(worker_pids(two_workers)) != 2
        ):
            await trio.sleep(0.1)
    assert pids[0] in worker_pids(two_workers) and pids[1] not in worker_pids(two_workers)
    assert scheduler_details(two_workers)["worker_restarts"] == 1
