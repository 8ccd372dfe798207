"""`inferflux pull hf://...` as a user runs it (a subprocess), against a stand-in hub on
loopback that serves the real default model file, so the real huggingface_hub client code
makes every request (tests/hf_standin.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hf_standin import Hub, file_sha256, serve, write_gguf

pytestmark = pytest.mark.model

REPO_ID = "org/SmolLM2-135M-Instruct-GGUF"


@pytest.fixture(scope="module")
def standin() -> Iterator[Hub]:
    hub = Hub()
    server = serve(hub)
    yield hub
    server.shutdown()


@pytest.fixture
def hub(standin: Hub, model_path: str, tmp_path: Path) -> Hub:
    """The stand-in, reset: one repo with two quantizations and a projector."""
    model = Path(model_path)
    standin.repos = {
        REPO_ID: {
            "SmolLM2-135M-Instruct-Q8_0.gguf": model,
            "SmolLM2-135M-Instruct-Q4_K_S.gguf": model,
            "mmproj-SmolLM2-f16.gguf": write_gguf(
                tmp_path / "mmproj.gguf", {"general.architecture": "clip"}
            ),
            "README.md": tmp_path / "mmproj.gguf",
        }
    }
    standin.requests.clear()
    standin.sent = 0
    standin.drop_after, standin.delay_s, standin.lie_sha256 = None, 0.0, set()
    return standin


def env_for(hub: Hub, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub.url, "HF_HOME": str(home / "hf"), "INFERFLUX_HOME": str(home)}
    return env | {"HF_HUB_DISABLE_TELEMETRY": "1"} | extra


def inferflux(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "inferflux", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def listed(env: dict[str, str]) -> list[dict]:
    result = inferflux(env, "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_pull_takes_the_nearest_quant_and_the_projector_and_resumes_a_dropped_download(
    hub: Hub, model_path: str, tmp_path: Path
) -> None:
    hub.drop_after = 30_000_000  # the hub hangs up once, 30 MB into the model file
    env = env_for(hub, tmp_path, HF_TOKEN="hf_secret")
    result = inferflux(env, "pull", f"hf://{REPO_ID}")
    assert result.returncode == 0, result.stderr
    # No Q4_K_M in the repo: Q4_K_S (4.57 bits) is nearer than Q8_0 (8.5).
    assert result.stdout.strip() == "smollm2-135m-instruct:q4_k_s"
    assert "no Q4_K_M in the repo: taking Q4_K_S" in result.stderr
    gets = hub.downloads("SmolLM2-135M-Instruct-Q4_K_S.gguf")
    assert [r.range for r in gets][0] is None and gets[1].range.startswith("bytes=")
    assert 0 < int(gets[1].range[6:-1]) <= 30_000_000  # continued, not started over
    assert not hub.downloads("SmolLM2-135M-Instruct-Q8_0.gguf")
    assert all(r.authorization == "Bearer hf_secret" for r in hub.requests)  # HF_TOKEN
    [model] = listed(env)
    assert model["sha256"] == file_sha256(Path(model_path))
    assert model["source"] == f"hf://{REPO_ID}" and model["quantization"] == "Q4_K_S"
    assert f"{REPO_ID}:Q4_K_S" in model["aliases"]
    assert model["mmproj_file"] == "mmproj-SmolLM2-f16.gguf" and "vision" in model["capabilities"]
    assert Path(model["mmproj_path"]).read_bytes().startswith(b"GGUF")
    assert file_sha256(Path(model["path"])) == model["sha256"]
    assert not list((tmp_path / "models" / "partial").iterdir())  # nothing left behind

    hub.requests.clear()  # a second pull finds it by its published sha256
    again = inferflux(env, "pull", f"hf://{REPO_ID}")
    assert again.returncode == 0 and "already in the store" in again.stderr
    assert not hub.downloads("SmolLM2-135M-Instruct-Q4_K_S.gguf")


def test_pull_takes_the_quant_asked_for(hub: Hub, tmp_path: Path) -> None:
    result = inferflux(env_for(hub, tmp_path), "pull", f"hf://{REPO_ID}:q8_0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "smollm2-135m-instruct:q8_0" and result.stderr == ""
    assert hub.downloads("SmolLM2-135M-Instruct-Q8_0.gguf")


def test_a_wrong_sha256_leaves_nothing_visible(hub: Hub, tmp_path: Path) -> None:
    hub.lie_sha256 = {"SmolLM2-135M-Instruct-Q4_K_S.gguf"}
    env = env_for(hub, tmp_path)
    result = inferflux(env, "pull", f"hf://{REPO_ID}")
    assert result.returncode == 1
    assert "has sha256" in result.stderr and "nothing stored" in result.stderr
    assert "Traceback" not in result.stderr
    assert listed(env) == []
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [".locks", "partial"]
    assert not list((models / "partial").iterdir())  # the damaged bytes are not kept


def test_a_killed_pull_resumes_where_it_stopped(hub: Hub, tmp_path: Path) -> None:
    hub.delay_s = 0.05  # ~5 s for the 94 MiB file: time to kill it halfway
    env = env_for(hub, tmp_path)
    command = [sys.executable, "-m", "inferflux", "pull", f"hf://{REPO_ID}"]
    pulling = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while hub.sent < 40_000_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    pulling.send_signal(signal.SIGKILL)
    pulling.wait(timeout=30)
    assert listed(env) == []  # nothing half-visible
    assert list((tmp_path / "models" / "partial").rglob("*.part"))

    hub.delay_s, hub.requests[:] = 0.0, []
    result = inferflux(env, "pull", f"hf://{REPO_ID}")
    assert result.returncode == 0, result.stderr
    [get] = hub.downloads("SmolLM2-135M-Instruct-Q4_K_S.gguf")
    assert get.range and int(get.range[6:-1]) > 10_000_000  # resumed from disk
    assert "resuming at" in result.stderr
    [model] = listed(env)
    assert file_sha256(Path(model["path"])) == model["sha256"]


def test_two_pulls_of_the_same_model_at_once(hub: Hub, tmp_path: Path) -> None:
    hub.delay_s = 0.01
    env = env_for(hub, tmp_path)
    command = [sys.executable, "-m", "inferflux", "pull", f"hf://{REPO_ID}"]
    both = [
        subprocess.Popen(
            command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["smollm2-135m-instruct:q4_k_s"] * 2
    assert any("waiting for another pull" in err for _, err in outputs)
    assert sum("already in the store" in err for _, err in outputs) == 1
    assert len(hub.downloads("SmolLM2-135M-Instruct-Q4_K_S.gguf")) == 1  # fetched once
    [model] = listed(env)
    assert file_sha256(Path(model["path"])) == model["sha256"]


def test_offline_mode(hub: Hub, tmp_path: Path) -> None:
    # Not in the store, not in the Hugging Face cache: a clear error, no request.
    offline = env_for(hub, tmp_path, HF_HUB_OFFLINE="1")
    result = inferflux(offline, "pull", f"hf://{REPO_ID}")
    assert result.returncode == 1 and "HF_HUB_OFFLINE is set" in result.stderr
    assert hub.requests == []
    # In the Hugging Face cache (an earlier `hf download`): taken from there, checked
    # against the blob's name (its sha256), still without a request.
    fill = "import huggingface_hub as h, sys; h.hf_hub_download(sys.argv[1], sys.argv[2])"
    for name in ("SmolLM2-135M-Instruct-Q8_0.gguf", "mmproj-SmolLM2-f16.gguf"):
        subprocess.run(
            [sys.executable, "-c", fill, REPO_ID, name], env=env_for(hub, tmp_path), check=True
        )
    hub.requests.clear()
    result = inferflux(offline, "pull", f"hf://{REPO_ID}")
    assert result.returncode == 0, result.stderr
    assert "from the Hugging Face cache" in result.stderr and hub.requests == []
    [model] = listed(offline)
    assert model["name"] == "smollm2-135m-instruct:q8_0" and model["mmproj_file"]
    # And once stored, offline pulls find it there.
    again = inferflux(offline, "pull", f"hf://{REPO_ID}")
    assert again.returncode == 0 and "already in the store" in again.stderr


def test_bad_repos_are_clear_errors(hub: Hub, tmp_path: Path) -> None:
    env = env_for(hub, tmp_path)
    result = inferflux(env, "pull", "hf://org/missing")
    assert result.returncode == 1 and "no model repo org/missing" in result.stderr
    hub.repos["org/empty"] = {"README.md": hub.repos[REPO_ID]["README.md"]}
    result = inferflux(env, "pull", "hf://org/empty")
    assert result.returncode == 1 and "nothing to pull" in result.stderr
    result = inferflux(env, "pull", "hf://org/repo:Q9_X")
    assert result.returncode == 2 and "unknown quantization" in result.stderr
    for output in (result.stderr,):
        assert "Traceback" not in output
