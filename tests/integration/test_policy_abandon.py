"""Admitted requests whose client leaves early, on a real one-slot server: the audit line
is written (status 499) and the reserved tokens are given back, also for a request that
never got past the scheduler's queue."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import MODEL_ID, serving
from tests.policy_support import wait_for

pytestmark = pytest.mark.model


def audit_lines(path: Path, trace: str) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if trace in x]


def test_a_client_gone_while_queued_is_audited_and_gets_its_tokens_back(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = PolicyStore.open(tmp_path / "p.store", b"abandon test", create=True)
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        # `tight` can hold one request of 200 + its prompt at a time (and refills 5/s).
        for name, tpm in (("busy", None), ("tight", 300)):
            request = ops.KeyRequest(name=name, scopes=["generate"], tokens_per_minute=tpm)
            keys[name], _, data = ops.create_key(data, request)
        return data

    store.update(fill)
    (tmp_path / "key").write_text("abandon test")
    audit = tmp_path / "audit.jsonl"
    servers = serving(
        tmp_path_factory, "policy-abandon", 1,
        "--policy-store", str(tmp_path / "p.store"), "--policy-key-file", str(tmp_path / "key"),
        "--audit-log", str(audit),
    )  # fmt: skip
    server = next(servers)
    try:
        url = f"{server.url}/v1/completions"
        busy = {"authorization": f"Bearer {keys['busy']}"}
        long = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 1000}
        long |= {"ignore_eos": True, "stream": True}
        trace = "7bf92f3577b34da6a3ce929d0e0e4736"
        tight = {"authorization": f"Bearer {keys['tight']}"}
        queued = {"model": MODEL_ID, "prompt": "Hello", "max_tokens": 200}
        started, stop = threading.Event(), threading.Event()

        def occupy() -> None:
            # Read on: a reader that stalls would lose its stream, and with it the slot.
            with httpx.stream("POST", url, headers=busy, json=long, timeout=120) as first:
                assert first.status_code == 200
                for _ in first.iter_lines():
                    started.set()
                    if stop.is_set():
                        return

        occupier = threading.Thread(target=occupy)
        occupier.start()
        try:
            assert started.wait(60)  # the one slot is taken
            with pytest.raises(httpx.ReadTimeout):  # queued behind it, then hangs up
                httpx.post(
                    url,
                    headers={**tight, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
                    json=queued,
                    timeout=1.5,
                )
            assert wait_for(lambda: audit_lines(audit, trace), timeout_s=15)
        finally:
            stop.set()
            occupier.join(120)
        (line,) = audit_lines(audit, trace)
        assert (line["status"], line["reason"], line["decision"]) == (499, "client_gone", "allow")
        assert line.get("completion_tokens", 0) == 0  # 0 is left out of the line
        # Its reservation (prompt + 200 of 300) came back: the same request fits again.
        # (Streamed: admission is what counts, so the first chunk is enough.)
        with httpx.stream(
            "POST", url, headers=tight, json=queued | {"stream": True}, timeout=120
        ) as again:
            assert again.status_code == 200, again.read()
    finally:
        servers.close()
