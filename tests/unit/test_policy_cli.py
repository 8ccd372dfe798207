"""`inferflux keys | roles | limits` against a real store file; `inferflux run` refusing a
bad one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inferflux.cli import main
from inferflux.policy.keys import hash_key
from inferflux.policy.store import PolicyStore
from tests.conftest import REPO


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("INFERFLUX_POLICY_KEY", "cli passphrase")
    return str(tmp_path / "policy.store")


def test_keys_create_list_revoke(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, _ = run(
        capsys, "keys", "create", "--name", "ci", "--scopes", "generate,models:read",
        "--models", "m1,m2", "--max-tokens", "50", "--rpm", "10", "--store", store,
    )  # fmt: skip
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("ifx_") and out.count(key) == 1
    data = PolicyStore.open(store, b"cli passphrase").data
    (record,) = data.keys.values()
    assert record.sha256 == hash_key(key) and record.grant.models == ["m1", "m2"]
    assert record.grant.max_tokens == 50 and data.limits[record.principal].requests_per_minute == 10
    assert data.limits[record.principal].tokens_per_minute is None  # inherited, not unlimited
    code, out, _ = run(capsys, "keys", "list", "--store", store)
    assert code == 0 and record.id in out and "active" in out and key not in out
    assert run(capsys, "keys", "revoke", "ci", "--store", store)[0] == 0  # by unique name
    listed = json.loads(run(capsys, "keys", "list", "--json", "--store", store)[1])
    assert listed[0]["revoked_at"] is not None
    code, _, err = run(capsys, "keys", "revoke", "nope", "--store", store)
    assert code == 2 and "no API key" in err


def test_roles_and_limits(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, _, _ = run(
        capsys, "roles", "set", "analyst", "--permissions", "generate,models:read",
        "--max-priority", "2", "--store", store,
    )  # fmt: skip
    assert code == 0
    roles = json.loads(run(capsys, "roles", "list", "--store", store)[1])
    assert roles["analyst"]["permissions"] == ["generate", "models:read"]
    assert roles["analyst"]["max_priority"] == 2
    assert run(capsys, "limits", "set", "role:analyst", "--rpm", "5", "--tpm", "900",
               "--store", store)[0] == 0  # fmt: skip
    limits = json.loads(run(capsys, "limits", "list", "--store", store)[1])
    assert limits == {"role:analyst": {"requests_per_minute": 5, "tokens_per_minute": 900}}
    assert run(capsys, "limits", "set", "*", "--tpm", "0", "--store", store)[0] == 0
    limits = json.loads(run(capsys, "limits", "list", "--store", store)[1])
    assert limits["*"] == {"tokens_per_minute": 0}  # explicitly unlimited; rpm inherited
    code, _, err = run(capsys, "limits", "set", "*", "--store", store)
    assert code == 2 and "requests_per_minute" in err
    assert run(capsys, "limits", "delete", "role:analyst", "--store", store)[0] == 0
    assert run(capsys, "roles", "delete", "analyst", "--store", store)[0] == 0
    assert json.loads(run(capsys, "roles", "list", "--store", store)[1]) == {}
    code, _, err = run(capsys, "roles", "set", "bad", "--permissions", "fly", "--store", store)
    assert code == 2 and "invalid request body" in err


def test_wrong_or_missing_key_and_missing_store(
    capsys: pytest.CaptureFixture[str], store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    run(capsys, "roles", "set", "r", "--permissions", "generate", "--store", store)
    monkeypatch.setenv("INFERFLUX_POLICY_KEY", "wrong")
    code, _, err = run(capsys, "keys", "list", "--store", store)
    assert code == 2 and "wrong key" in err
    key_file = tmp_path / "key"
    key_file.write_text("cli passphrase\n")
    assert run(capsys, "roles", "list", "--store", store, "--key-file", str(key_file))[0] == 0
    monkeypatch.delenv("INFERFLUX_POLICY_KEY")
    code, _, err = run(capsys, "keys", "list", "--store", store)
    assert code == 2 and "INFERFLUX_POLICY_KEY" in err
    code, _, err = run(capsys, "keys", "list", "--store", str(tmp_path / "none"),
                       "--key-file", str(key_file))  # fmt: skip
    assert code == 2 and "does not exist" in err


def test_run_with_a_store_asking_for_absurd_scrypt_parameters_exits_2(tmp_path: Path) -> None:
    """Before anything loads: a message and exit code 2, not a Rust panic's traceback."""
    path = tmp_path / "policy.store"
    store = PolicyStore.open(path, b"cli passphrase", create=True)
    store.save(store.data)
    blob = bytearray(path.read_bytes())
    blob[8] = 56  # scrypt log2(N)
    path.write_bytes(bytes(blob))
    result = subprocess.run(
        [sys.executable, "-m", "inferflux", "run", "--port", "0", "--policy-store", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "INFERFLUX_POLICY_KEY": "cli passphrase"},
    )
    assert result.returncode == 2, result.stderr
    assert "scrypt log2_n = 56, outside the accepted" in result.stderr
    assert "Traceback" not in result.stderr and "panicked" not in result.stderr


def test_max_concurrent_on_keys_and_roles(capsys: pytest.CaptureFixture[str], store: str) -> None:
    code, out, _ = run(
        capsys, "keys", "create", "--name", "batch", "--scopes", "generate",
        "--max-concurrent", "3", "--store", store,
    )  # fmt: skip
    assert code == 0
    listed = json.loads(run(capsys, "keys", "list", "--json", "--store", store)[1])
    assert listed[0]["max_concurrent"] == 3
    assert run(capsys, "roles", "set", "crawler", "--permissions", "generate",
               "--max-concurrent", "2", "--store", store)[0] == 0  # fmt: skip
    roles = json.loads(run(capsys, "roles", "list", "--store", store)[1])
    assert roles["crawler"]["max_concurrent"] == 2
    code, _, err = run(
        capsys, "keys", "create", "--name", "zero", "--scopes", "generate",
        "--max-concurrent", "0", "--store", store,
    )  # fmt: skip
    assert code == 2 and "max_concurrent" in err  # at least 1 (none: leave the flag out)
