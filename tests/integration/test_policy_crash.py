"""The policy actor crashing while it holds decisions: callers are answered after the
restart (never a 5xx), and the restarted actor still enforces the store."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from actors import send_command
from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import MODEL_ID, serving

pytestmark = pytest.mark.model


def test_policy_crash_mid_burst_answers_every_request(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = PolicyStore.open(tmp_path / "p.store", b"crash test", create=True)
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        for name, scopes in (("user", ["generate", "models:read"]), ("gone", ["models:read"])):
            keys[name], _, data = ops.create_key(data, ops.KeyRequest(name=name, scopes=scopes))
        return ops.revoke_key(data, "gone")[1]

    store.update(fill)
    (tmp_path / "key").write_text("crash test")
    servers = serving(
        tmp_path_factory, "policy-crash", 2, "--chaos",
        "--policy-store", str(tmp_path / "p.store"), "--policy-key-file", str(tmp_path / "key"),
    )  # fmt: skip
    server = next(servers)
    try:
        address = re.search(r"actor tree at (\S+)", server.log())
        assert address, server.log()
        user = {"authorization": f"Bearer {keys['user']}"}

        def one(i: int) -> int:
            if i % 4 == 0:
                body = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 2}
                with httpx.Client(timeout=60) as c:
                    return c.post(
                        f"{server.url}/v1/completions", headers=user, json=body
                    ).status_code
            with httpx.Client(timeout=60) as c:
                return c.get(f"{server.url}/v1/models", headers=user).status_code

        with ThreadPoolExecutor(8) as pool:
            burst = [pool.submit(one, i) for i in range(40)]
            time.sleep(0.05)
            answer = send_command(address.group(1), {"op": "crash", "actor": "policy"})
            statuses = [f.result() for f in burst]
        assert "error" not in answer, answer
        assert statuses == [200] * 40
        assert server.metric("inferflux:actor_restarts_total", actor="policy") >= 1
        gone = {"authorization": f"Bearer {keys['gone']}"}
        assert httpx.get(f"{server.url}/v1/models", headers=gone).status_code == 401
        assert httpx.get(f"{server.url}/v1/models").status_code == 401
    finally:
        servers.close()
