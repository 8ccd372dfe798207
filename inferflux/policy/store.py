"""The policy store: keys, roles and limits in one file, encrypted at rest with AES-GCM.

File layout (all of the header is authenticated as AES-GCM associated data):

    magic "IFXPOL1\\n" (8) | scrypt log2(n) (1) | r (1) | p (1) | salt (16) | nonce (12) |
    ciphertext + tag

The 256-bit key is scrypt(secret, salt): the secret is the passphrase in
INFERFLUX_POLICY_KEY or the contents of a key file, stretched the same way either way, so a
weak passphrase still costs an attacker ~0.1 s and 32 MiB per guess. A wrong secret, a
missing one or a tampered file is a `PolicyStoreError` naming the cause, never an empty
store.

The scrypt parameters come from the header, and the header can only be authenticated with
the key they derive: they are used before anything vouches for them. So they are bounded
first (`KDF_BOUNDS`: what `inferflux keys` writes, 2^15 / 8 / 1, with 4x / 2x / 2x of
headroom, at most 256 MiB and ~1.5 s): an unbounded log2(N) of 56 makes the Rust scrypt
panic (a BaseException that ends the process) and one of 30 asks for 1 TiB, on every
reload poll. Writes go to a temporary file in the same directory, fsync, rename over the old file,
fsync the directory: a crash at any point leaves either the old file or the new one.
Read-modify-write cycles of different processes (a running server, `inferflux keys`) are
serialized with an flock on `<path>.lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .records import StoreData, upgrade

MAGIC = b"IFXPOL1\n"
KEY_ENV = "INFERFLUX_POLICY_KEY"
_HEADER = len(MAGIC) + 3 + 16 + 12
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1
# (lowest, highest) accepted from a header, per parameter; 128 * r * 2^log2_n bytes of
# memory at the top: 256 MiB.
KDF_BOUNDS = {"log2_n": (10, 17), "r": (1, 16), "p": (1, 2)}


class PolicyStoreError(Exception):
    """The store cannot be used as asked; the message says why and how to fix it."""


def read_secret(
    key_file: str | None, environ: dict[str, str] | os._Environ[str] | None = None
) -> bytes:
    """The store secret: the key file's contents if given, else INFERFLUX_POLICY_KEY."""
    env = os.environ if environ is None else environ
    if key_file:
        try:
            secret = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise PolicyStoreError(
                f"cannot read policy key file {key_file}: {exc.strerror}"
            ) from None
        if not secret:
            raise PolicyStoreError(f"policy key file {key_file} is empty")
        return secret
    secret = env.get(KEY_ENV, "").encode()
    if not secret:
        raise PolicyStoreError(
            f"the policy store is encrypted: set {KEY_ENV} to its passphrase or pass "
            "--policy-key-file PATH"
        )
    return secret


@dataclass(frozen=True)
class _Params:
    log2_n: int
    r: int
    p: int
    salt: bytes

    def header(self) -> bytes:
        return MAGIC + bytes([self.log2_n, self.r, self.p]) + self.salt

    def check(self, path: Path) -> None:
        """Refuse parameters outside KDF_BOUNDS before scrypt ever sees them."""
        for name, (low, high) in KDF_BOUNDS.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise PolicyStoreError(
                    f"policy store {path} asks for scrypt {name} = {value}, outside the "
                    f"accepted {low}..{high}: not a store `inferflux keys` wrote, or altered"
                )


def _derive(secret: bytes, params: _Params) -> bytes:
    kdf = Scrypt(salt=params.salt, length=32, n=2**params.log2_n, r=params.r, p=params.p)
    try:
        return kdf.derive(secret)
    except (ValueError, MemoryError) as exc:  # bounded parameters make these unlikely
        raise PolicyStoreError(f"cannot derive the policy store key: {exc}") from None


@dataclass(frozen=True)
class FileStamp:
    """Identity of one version of the file on disk, to notice changes cheaply."""

    inode: int
    size: int
    mtime_ns: int


def stamp(path: Path) -> FileStamp | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return FileStamp(info.st_ino, info.st_size, info.st_mtime_ns)


class PolicyStore:
    """One encrypted store file. `data` is the last version read or written.

    Not thread-safe by itself: in the server only the policy actor uses it (from a worker
    thread for the slow file and KDF work, one operation at a time)."""

    def __init__(self, path: str | Path, secret: bytes, *, kdf_log2_n: int = SCRYPT_LOG2_N) -> None:
        self.path = Path(path)
        self._secret = secret
        _Params(kdf_log2_n, SCRYPT_R, SCRYPT_P, b"").check(self.path)
        self._kdf_log2_n = kdf_log2_n
        self._params: _Params | None = None
        self._key: bytes | None = None
        self.data = StoreData()
        self.stamp: FileStamp | None = None

    # -- opening -----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, secret: bytes, *, create: bool = False) -> PolicyStore:
        """Read the store; with `create`, a missing file starts an empty store (written on
        the first save). A missing file without `create` is an error."""
        store = cls(path, secret)
        if store.path.exists():
            store.reload()
        elif not create:
            raise PolicyStoreError(
                f"policy store {store.path} does not exist; create it with "
                f"`inferflux keys create --store {store.path} ...`"
            )
        return store

    def reload(self) -> None:
        """Read and decrypt the file (raises PolicyStoreError; `data` is kept on error)."""
        current = stamp(self.path)
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise PolicyStoreError(
                f"cannot read policy store {self.path}: {exc.strerror}"
            ) from None
        self.data = self._decrypt(blob)
        self.stamp = current

    def changed_on_disk(self) -> bool:
        return stamp(self.path) != self.stamp

    def _decrypt(self, blob: bytes) -> StoreData:
        if len(blob) < _HEADER + 16 or not blob.startswith(MAGIC):
            raise PolicyStoreError(
                f"{self.path} is not an InferFlux policy store (bad header, {len(blob)} bytes)"
            )
        at = len(MAGIC)
        params = _Params(blob[at], blob[at + 1], blob[at + 2], blob[at + 3 : at + 19])
        nonce = blob[at + 19 : _HEADER]
        params.check(self.path)
        key = self._key_for(params)
        try:
            plain = AESGCM(key).decrypt(nonce, blob[_HEADER:], params.header())
        except InvalidTag:
            raise PolicyStoreError(
                f"cannot decrypt policy store {self.path}: wrong key ({KEY_ENV} or "
                "--policy-key-file) or the file was altered"
            ) from None
        try:
            return upgrade(msgspec.json.decode(plain, type=StoreData))
        except msgspec.DecodeError as exc:
            raise PolicyStoreError(f"policy store {self.path} holds invalid data: {exc}") from None

    def _key_for(self, params: _Params) -> bytes:
        if self._params != params or self._key is None:
            self._key = _derive(self._secret, params)
            self._params = params
        return self._key

    # -- writing -----------------------------------------------------------------
    def save(self, data: StoreData) -> None:
        """Encrypt and atomically replace the file; `data` becomes current only once the
        new file is in place."""
        params = self._params or _Params(self._kdf_log2_n, SCRYPT_R, SCRYPT_P, os.urandom(16))
        key = self._key_for(params)
        nonce = os.urandom(12)  # fresh per write: never reuse a nonce under one key
        blob = (
            params.header()
            + nonce
            + AESGCM(key).encrypt(nonce, msgspec.json.encode(data), params.header())
        )
        _atomic_write(self.path, blob)
        self.data = data
        self.stamp = stamp(self.path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[StoreData]:
        """Hold the cross-process lock, with `data` fresh from disk if another process
        changed the file: the read-modify-write of one admin operation."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists() and self.changed_on_disk():
                    self.reload()
                yield self.data
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, change: Callable[[StoreData], StoreData]) -> StoreData:
        """Apply `change` to the current data under the lock and save the result."""
        with self.locked() as data:
            new = change(msgspec.json.decode(msgspec.json.encode(data), type=StoreData))
            self.save(new)
            return new


def _atomic_write(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
