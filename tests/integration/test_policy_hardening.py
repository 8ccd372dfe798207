"""The policy's hardening on a real server: the store passphrase kept from the worker's
environment, a store file that turns unreadable while serving, priority as a privilege,
failed authentications limited per address, the audit log bounded and failing closed, a
key's generations at once bounded by max_concurrent.
Clients: the official `openai` client and httpx."""

from __future__ import annotations

import json
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
        "solo": ops.KeyRequest(name="solo", scopes=["generate"], max_concurrent=1),
        "admin": ops.KeyRequest(name="admin", scopes=["admin"]),
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
    config.write_text("[policy]\nstore_poll_s = 0.2\nauth_failures_per_minute = 5\n")
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


def find(tree: dict, name: str) -> dict:
    """The actor called `name` anywhere in a /debug/actors tree."""
    if tree["name"] == name:
        return tree
    for child in tree.get("children", []):
        found = find(child, name)
        if found:
            return found
    return {}


def test_the_worker_process_environment_holds_no_secrets(hardened: Hardened) -> None:
    tree = httpx.get(f"{hardened.server.url}/debug/actors", timeout=10).json()
    worker_pid = find(tree, "worker-0")["pid"]
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


def trace(n: int) -> dict[str, str]:
    return {"traceparent": f"00-{n:032x}-00f067aa0ba902b7-01"}


def audit_lines(hardened: Hardened, traces: set[str]) -> list[dict]:
    lines = [json.loads(x) for x in hardened.audit.read_text().splitlines()]
    return [line for line in lines if line["trace_id"] in traces]


def test_failed_authentications_are_limited_per_address(hardened: Hardened) -> None:
    """5 failures a minute per address (this server's setting): then 429 + Retry-After,
    written once, the rest counted; the same address with a valid key is served."""
    url = f"{hardened.server.url}/v1/chat/completions"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
    bad = {"authorization": "Bearer ifx_000000000000_" + "A" * 43}
    statuses = [
        httpx.post(url, json=body, headers={**bad, **trace(0xA000 + i)}).status_code
        for i in range(5)
    ]
    assert statuses == [401] * 5
    with pytest.raises(openai.RateLimitError) as throttled:
        chat(hardened, "ifx_000000000000_" + "B" * 43, extra_headers=trace(0xA005))
    assert throttled.value.body["code"] == "too_many_auth_failures"
    assert 1 <= int(throttled.value.response.headers["retry-after"]) <= 12
    for i in range(20):  # a client that keeps going: 429s, not written one by one
        refused = httpx.post(url, json=body, headers=trace(0xA006 + i))  # no key at all
        assert refused.status_code == 429
    assert chat(hardened, hardened.keys["user"], extra_headers=trace(0xA100)).choices
    traces = {f"{0xA000 + i:032x}" for i in range(26)} | {f"{0xA100:032x}"}
    assert wait_for(lambda: len(audit_lines(hardened, traces)) == 7)
    lines = audit_lines(hardened, traces)
    assert [line["status"] for line in lines] == [401] * 5 + [429, 200]
    assert lines[5]["reason"] == "too_many_auth_failures"
    assert all(line["client"] == "127.0.0.1" for line in lines)


def test_what_the_request_line_brings_is_clipped_in_the_audit_log(hardened: Hardened) -> None:
    user = {"authorization": f"Bearer {hardened.keys['user']}"}
    url = hardened.server.url
    long_path = httpx.get(f"{url}/v1/{'a' * 8000}", headers={**user, **trace(0xB001)})
    assert long_path.status_code == 404
    long_method = httpx.request("X" * 300, f"{url}/v1/models", headers={**user, **trace(0xB002)})
    assert long_method.status_code == 405
    traces = {f"{0xB001:032x}", f"{0xB002:032x}"}
    assert wait_for(lambda: len(audit_lines(hardened, traces)) == 2)
    path_line, method_line = audit_lines(hardened, traces)
    assert path_line["path"].endswith("...[+7492]") and len(path_line["path"]) < 600
    assert method_line["method"] == "X" * 16 + "...[+284]"


def test_a_full_audit_disk_fails_closed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """policy.audit_fail_closed with the audit log on a full device (/dev/full: every
    write fails with ENOSPC): once a line could not be written, protected requests get
    503 + Retry-After; open endpoints still answer."""
    directory = tmp_path_factory.mktemp("full-disk")
    keys = make_store(directory / "policy.store")
    (directory / "key").write_text(SECRET)
    config = directory / "inferflux.toml"
    config.write_text('[policy]\naudit_log = "/dev/full"\naudit_fail_closed = true\n')
    servers = serving(
        tmp_path_factory, "full-disk-server", 1, "--config", str(config),
        "--policy-store", str(directory / "policy.store"),
        "--policy-key-file", str(directory / "key"),
    )  # fmt: skip
    server = next(servers)
    try:

        def user() -> openai.OpenAI:
            # A connection each: one whose request body was never read (refused before
            # it) is not reused.
            return openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys["user"], max_retries=0)

        assert [m.id for m in user().models.list()] == [MODEL_ID]  # its line: ENOSPC
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as refused:
                user().chat.completions.create(
                    model=MODEL_ID,
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=2,
                    stream=stream,
                )
            assert refused.value.status_code == 503
            assert refused.value.body["code"] == "audit_unavailable"
            assert refused.value.response.headers["retry-after"] == "5"
        assert httpx.get(f"{server.url}/livez").status_code == 200
        assert server.log().count("cannot write the audit log /dev/full") == 1
    finally:
        servers.close()


def test_max_concurrent_bounds_the_generations_a_key_runs_at_once(hardened: Hardened) -> None:
    url, solo = hardened.server.url, hardened.keys["solo"]  # max_concurrent 1
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {solo}"}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", headers=headers, json=body, timeout=60
    ) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # held: a dropped iterator closes the stream
        next(lines)
        with pytest.raises(openai.RateLimitError) as over:
            chat(hardened, solo)
        assert over.value.body["code"] == "concurrency_limit_exceeded"
        assert over.value.response.headers["retry-after"] == "1"
        assert chat(hardened, hardened.keys["user"]).choices  # other keys: not affected
    with pytest.raises(openai.BadRequestError) as never:
        chat(hardened, solo, n=2)  # two generations at once can never fit
    assert never.value.body["code"] == "concurrency_exceeds_limit"

    def served() -> bool:
        try:
            return bool(chat(hardened, solo).choices)
        except openai.RateLimitError:
            return False

    assert wait_for(served)  # the stream the client left ended: its place is back
    admin = {"authorization": f"Bearer {hardened.keys['admin']}"}
    made = httpx.post(
        f"{url}/v1/admin/keys",
        headers=admin,
        json={"name": "pair", "scopes": ["generate"], "max_concurrent": 2},
    )
    assert made.status_code == 201 and made.json()["max_concurrent"] == 2
    role = httpx.put(
        f"{url}/v1/admin/roles/crawler",
        headers=admin,
        json={"permissions": ["generate"], "max_concurrent": 3},
    )
    assert role.status_code == 200 and role.json()["max_concurrent"] == 3
