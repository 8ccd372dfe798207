"""The encrypted policy store: round trip, wrong or missing key, tampering, crash mid-write."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inferflux.policy import ops
from inferflux.policy.keys import hash_key
from inferflux.policy.records import StoreData
from inferflux.policy.store import (
    KDF_BOUNDS,
    KEY_ENV,
    SCRYPT_LOG2_N,
    SCRYPT_P,
    SCRYPT_R,
    PolicyStore,
    PolicyStoreError,
    read_secret,
)
from tests.conftest import REPO

# Long enough that random ciphertext never holds it by chance (a 2-byte name would, ~0.5%).
KEY_NAME = "store-test-key-name-0f3c9a"


def make_store(path: Path, secret: bytes = b"correct horse") -> tuple[PolicyStore, str]:
    store = PolicyStore.open(path, secret, create=True)
    created: list[str] = []

    def add(data: StoreData) -> StoreData:
        key, _, new = ops.create_key(
            data, ops.KeyRequest(name=KEY_NAME, scopes=["generate"], max_tokens=64)
        )
        created.append(key)
        return new

    store.update(add)
    return store, created[0]


def test_round_trip_holds_only_hashes_and_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "policy.store"
    store, key = make_store(path)
    blob = path.read_bytes()
    assert key.encode() not in blob and KEY_NAME.encode() not in blob
    assert b"generate" not in blob
    assert hash_key(key).encode() not in blob  # even the hash is only inside the ciphertext
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = PolicyStore.open(path, b"correct horse")
    (record,) = again.data.keys.values()
    assert record.sha256 == hash_key(key) and record.grant.max_tokens == 64
    assert again.data == store.data


def test_wrong_key_is_a_clear_error_never_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "policy.store"
    make_store(path)
    with pytest.raises(PolicyStoreError, match="wrong key"):
        PolicyStore.open(path, b"Correct horse")


def test_missing_key_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyStoreError, match=KEY_ENV):
        read_secret(None, environ={})
    with pytest.raises(PolicyStoreError, match="cannot read policy key file"):
        read_secret(str(tmp_path / "nope"), environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(PolicyStoreError, match="is empty"):
        read_secret(str(tmp_path / "empty"), environ={})
    (tmp_path / "keyfile").write_text("from a file\n")
    assert read_secret(str(tmp_path / "keyfile"), environ={KEY_ENV: "env"}) == b"from a file"
    assert read_secret(None, environ={KEY_ENV: "env"}) == b"env"
    with pytest.raises(PolicyStoreError, match="does not exist"):
        PolicyStore.open(tmp_path / "absent.store", b"x")


def test_tampered_or_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.store"
    make_store(path)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0x01  # one bit of the ciphertext
    path.write_bytes(bytes(blob))
    with pytest.raises(PolicyStoreError, match="altered"):
        PolicyStore.open(path, b"correct horse")
    blob[-5] ^= 0x01
    blob[9] ^= 0x01  # the header (authenticated as associated data)
    path.write_bytes(bytes(blob))
    with pytest.raises(PolicyStoreError):
        PolicyStore.open(path, b"correct horse")
    path.write_text('{"keys": {}}')
    with pytest.raises(PolicyStoreError, match="not an InferFlux policy store"):
        PolicyStore.open(path, b"correct horse")


CRASH = textwrap.dedent(
    """
    import os, sys
    from inferflux.policy import ops
    from inferflux.policy.store import PolicyStore

    path, where = sys.argv[1], sys.argv[2]
    store = PolicyStore.open(path, b"correct horse")
    real_fsync = os.fsync
    if where == "before-rename":
        os.replace = lambda *a: os._exit(137)
    elif where == "mid-write":
        # The temporary file holds a few bytes of the new version when the process dies.
        import tempfile
        real_fdopen = os.fdopen
        def fdopen(fd, *a, **k):
            f = real_fdopen(fd, *a, **k)
            write = f.write
            def torn(data):
                write(data[:7]); f.flush(); os._exit(137)
            f.write = torn
            return f
        os.fdopen = fdopen
    store.update(lambda d: ops.put_role(d, "crash", ops.RoleRequest(permissions=["generate"])))
    """
)


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_store_is_unchanged_after_a_crash_mid_write(tmp_path: Path, where: str) -> None:
    path = tmp_path / "policy.store"
    store, key = make_store(path)
    before = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-c", CRASH, str(path), where], cwd=REPO, capture_output=True
    )
    assert result.returncode == 137, result.stderr.decode()
    assert path.read_bytes() == before
    survivor = PolicyStore.open(path, b"correct horse")
    assert "crash" not in survivor.data.roles
    assert survivor.data == store.data
    # The next write goes through and leaves one store file (the torn temp is harmless).
    survivor.update(lambda d: ops.put_role(d, "after", ops.RoleRequest(permissions=["generate"])))
    assert "after" in PolicyStore.open(path, b"correct horse").data.roles


def test_update_sees_changes_made_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "policy.store"
    first, _ = make_store(path)
    second = PolicyStore.open(path, b"correct horse")
    second.update(lambda d: ops.put_role(d, "a", ops.RoleRequest(permissions=["generate"])))
    assert first.changed_on_disk()
    first.update(lambda d: ops.put_role(d, "b", ops.RoleRequest(permissions=["generate"])))
    final = PolicyStore.open(path, b"correct horse").data
    assert set(final.roles) == {"a", "b"} and len(final.keys) == 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def with_kdf_header(path: Path, log2_n: int, r: int, p: int) -> None:
    """Rewrite the scrypt parameters in a real store's header (the tag no longer matches,
    but the parameters are read, and used, before the tag is checked)."""
    blob = bytearray(path.read_bytes())
    at = len(b"IFXPOL1\n")
    blob[at : at + 3] = bytes([log2_n, r, p])
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    ("log2_n", "r", "p", "named"),
    [
        (56, 8, 1, "log2_n = 56"),  # scrypt's Rust side panics: a BaseException
        (30, 8, 1, "log2_n = 30"),  # 1 TiB of memory asked for
        (18, 8, 1, "log2_n = 18"),  # valid, 512 MiB and seconds per try, on every poll
        (9, 8, 1, "log2_n = 9"),
        (15, 0, 1, "r = 0"),  # scrypt refuses it with a ValueError
        (15, 17, 1, "r = 17"),
        (15, 8, 3, "p = 3"),
    ],
)
def test_scrypt_parameters_beyond_the_bounds_are_refused_before_scrypt(
    tmp_path: Path, log2_n: int, r: int, p: int, named: str
) -> None:
    path = tmp_path / "policy.store"
    make_store(path)
    with_kdf_header(path, log2_n, r, p)
    with pytest.raises(PolicyStoreError, match=f"scrypt {named}, outside the accepted"):
        PolicyStore.open(path, b"correct horse")


def test_the_parameters_inferflux_keys_writes_are_inside_the_bounds(tmp_path: Path) -> None:
    path = tmp_path / "policy.store"
    make_store(path)
    assert path.read_bytes()[8:11] == bytes([SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P])
    for name, value in (("log2_n", SCRYPT_LOG2_N), ("r", SCRYPT_R), ("p", SCRYPT_P)):
        low, high = KDF_BOUNDS[name]
        assert low <= value < high  # room to raise them later
