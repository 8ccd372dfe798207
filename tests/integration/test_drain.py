"""SIGTERM drains: readyz turns 503 at once, new work is refused with 503, in-flight streams
finish, then exit 0 and no orphan worker."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import MODEL_ID, start_server

pytestmark = pytest.mark.model


def test_sigterm_finishes_in_flight_streams_then_exits_cleanly(model_path: str, tmp_path) -> None:
    server = start_server(str(tmp_path), "--n-parallel", "2", "--ctx-size", "512")
    worker = subprocess.run(
        ["pgrep", "-f", "-P", str(server.process.pid), "inferflux-worker"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert worker
    chunks = 0
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        timeout=60,
        json={
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 120,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                chunks += 1
            if chunks == 5:
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.3)
                ready = httpx.get(f"{server.url}/readyz", timeout=5)
                assert ready.status_code == 503 and ready.json()["reason"] == "draining"
                refused = httpx.post(
                    f"{server.url}/v1/completions",
                    timeout=5,
                    json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 2},
                )
                assert refused.status_code == 503
                assert refused.json()["error"]["code"] == "draining"
                assert refused.headers["retry-after"] == "1"
                break
        tail = [line for line in lines if line.startswith("data: ")]
    assert tail[-1] == "data: [DONE]"
    assert '"completion_tokens":120' in tail[-2]  # the whole stream was delivered
    assert server.process.wait(timeout=30) == 0
    assert "crashed" not in server.log() and "Traceback" not in server.log()
    time.sleep(0.2)
    assert subprocess.run(["kill", "-0", worker[0]], capture_output=True).returncode != 0
