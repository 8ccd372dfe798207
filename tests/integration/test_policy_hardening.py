"""The policy's hardening on a real server: the store passphrase kept from the worker's
environment, a store file that turns unreadable while serving, priority as a privilege.
Clients: the official `openai` client and httpx."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import MODEL_ID, RunningServer, serving
from tests.policy_support import wait_for

pytestmark = pytest.mark.model

SECRET = "hardening passphrase"
# Secrets of other software in the server's environment: no worker needs them.
DECOYS = {"OPENAI_API_KEY": "sk-decoy-7731", "AWS_SECRET_ACCESS_KEY": "aws-decoy-7731"}


@dataclass
class Hardened:
    server: RunningServer
    store: Path
    audit: Path
    keys: dict[str, str]


def make_store(path: Path) -> dict[str, str]:
    store = PolicyStore.open(path, SECRET.encode(), create=True)
    requests = {
        "user": ops.KeyRequest(name="user", scopes=["generate", "models:read"]),
        "boss": ops.KeyRequest(name="boss", scopes=["generate"], max_priority=5),
    }
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        for name, request in requests.items():
            keys[name], _, data = ops.create_key(data, request)
        return data

    store.update(fill)
    return keys


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    directory = tmp_path_factory.mktemp("hardened")
    keys = make_store(directory / "policy.store")
    audit = directory / "audit.jsonl"
    config = directory / "inferflux.toml"
    config.write_text("[policy]\nstore_poll_s = 0.2\n")
    # The passphrase comes from the environment here (not a key file), with other secrets.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("INFERFLUX_POLICY_KEY", SECRET)
        for name, value in DECOYS.items():
            env.setenv(name, value)
        servers = serving(
            tmp_path_factory, "hardened-server", 2, "--config", str(config),
            "--policy-store", str(directory / "policy.store"), "--audit-log", str(audit),
        )  # fmt: skip
        server = next(servers)
    try:
        yield Hardened(server, directory / "policy.store", audit, keys)
    finally:
        servers.close()


def client(hardened: Hardened, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hardened.server.url}/v1", api_key=key, max_retries=0)


def chat(hardened: Hardened, key: str, **kwargs):
    return client(hardened, key).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Say hi."}],
        **{"max_tokens": 2, "temperature": 0, **kwargs},
    )


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_the_worker_process_environment_holds_no_secrets(hardened: Hardened) -> None:
    tree = httpx.get(f"{hardened.server.url}/debug/actors", timeout=10).json()
    engine = next(c for c in tree["children"] if c["name"] == "engine")
    worker_pid = engine["children"][0]["pid"]
    assert worker_pid > 0 and worker_pid != hardened.server.process.pid
    worker = environ_of(worker_pid)
    assert "INFERFLUX_POLICY_KEY" not in worker
    assert not set(DECOYS) & set(worker)
    assert SECRET not in "\0".join(worker.values())
    assert worker.get("PATH") == os.environ.get("PATH")  # what it runs with is still there
    assert chat(hardened, hardened.keys["user"]).choices  # and it serves


def test_a_store_that_turns_unreadable_keeps_the_last_good_one(hardened: Hardened) -> None:
    good = hardened.store.read_bytes()
    bad = bytearray(good)
    bad[8] = 56  # scrypt log2(N) = 56: made scrypt panic and the server exit
    try:
        hardened.store.write_bytes(bytes(bad))
        assert wait_for(lambda: "log2_n = 56" in hardened.server.log())
        assert "keeping the last good version" in hardened.server.log()
        assert hardened.server.process.poll() is None
        assert chat(hardened, hardened.keys["user"]).choices
    finally:
        hardened.store.write_bytes(good)


def test_priority_above_the_default_needs_a_grant(hardened: Hardened) -> None:
    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(hardened, hardened.keys["user"], extra_body={"priority": 1})
    assert refused.value.body["code"] == "priority_not_allowed"
    assert "above the ceiling of 0" in refused.value.body["message"]
    assert chat(hardened, hardened.keys["boss"], extra_body={"priority": 5}).choices
    with pytest.raises(openai.PermissionDeniedError):
        chat(hardened, hardened.keys["boss"], extra_body={"priority": 6})
