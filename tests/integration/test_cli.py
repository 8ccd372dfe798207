"""The `inferflux` command line as a user runs it (real processes)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from actors import fetch_snapshot
from tests.conftest import MODEL_ID, REPO, RunningServer, start_server, stop_server


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inferflux", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("role", "needs"),
    [("prefill", "needs cluster.listen (--cluster-listen ADDR)"),
     ("decode", "needs cluster.prefill (--prefill ADDR[,ADDR...])")],
)  # fmt: skip
def test_a_role_without_its_cluster_address_is_refused_clearly(role: str, needs: str) -> None:
    result = run_cli("run", "--role", role)
    assert result.returncode == 2
    assert f"role {role} {needs}" in result.stderr


def test_bad_config_and_bad_model_are_clear_errors(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 1\n")
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2 and "unknown field `prot`" in result.stderr
    not_a_model = tmp_path / "x.gguf"
    not_a_model.write_bytes(b"not a gguf")
    result = run_cli("run", "--model", str(not_a_model), "--port", "0")
    assert result.returncode != 0 and "cannot start" in result.stderr


def run_top(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from inferflux.top import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )


def test_top_answers_help_and_fails_clearly_without_a_server() -> None:
    result = run_top("--help")
    assert result.returncode == 0 and "--once" in result.stdout
    result = run_top("--url", "http://127.0.0.1:9", "--once")
    assert result.returncode == 1 and "cannot read" in result.stderr


@pytest.mark.model
def test_actor_tree_is_visible_over_http_and_the_introspection_socket(
    model_path: str, tmp_path
) -> None:
    server: RunningServer = start_server(str(tmp_path), "--n-parallel", "2", "--ctx-size", "512")
    try:
        tree = httpx.get(f"{server.url}/debug/actors", timeout=10).json()
        names = {child["name"]: child for child in tree["children"]}
        assert tree["name"] == "inferflux" and tree["state"] == "running"
        assert set(names) == {"policy", "models", "ingress"}
        (engines,) = names["models"]["children"]  # the supervisor of the models' subtrees
        (subtree,) = engines["children"]
        assert subtree["name"] == f"model:{MODEL_ID}"
        assert [c["name"] for c in subtree["children"]] == ["engine", "metrics", "scheduler"]
        worker = subtree["children"][0]["children"][0]
        assert worker["kind"] == "process" and worker["pid"] > 0
        deadline = time.monotonic() + 10
        while "actor tree at" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)  # the start-up line follows readiness by a moment
        address = next(
            line.rsplit("actor tree at ", 1)[1].strip()
            for line in server.log().splitlines()
            if "actor tree at" in line
        )
        snapshot = fetch_snapshot(address)
        assert snapshot.name == "inferflux"
        assert [c.name for c in snapshot.children] == ["policy", "models", "ingress"]
        top = run_top("--url", server.url, "--once")
        assert top.returncode == 0, top.stderr
        table, _, summary = top.stdout.partition("\n\n")
        rows = {line.split()[0]: line for line in table.splitlines()[1:]}
        assert set(rows) == {
            "inferflux", "policy", "models", "engines", f"model:{MODEL_ID}", "engine",
            "worker-0", "metrics", "scheduler", "ingress",
        }  # fmt: skip
        assert " process " in rows["worker-0"] and str(worker["pid"]) in rows["worker-0"]
        assert "scheduler: running 0  waiting 0" in summary
        assert "kv cache:  KV cells used" in summary
        via_socket = run_top("--socket", address, "--once")
        assert via_socket.returncode == 0, via_socket.stderr
        assert "worker-0" in via_socket.stdout and str(worker["pid"]) in via_socket.stdout
    finally:
        stop_server(server)
