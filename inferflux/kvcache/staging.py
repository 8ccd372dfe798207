"""Staging files: where an exported KV state waits between the worker that wrote it and
the worker that loads it (disaggregated prefill, issue 14).

A state is tens to hundreds of MB (46 MB for a 2,000-token prompt of the default model).
llama.cpp writes it straight into a shared file mapping (llama_state_seq_get_data into an
mmap) and reads it straight from one (llama_state_seq_set_data), so no process copies it
into a message: between two nodes on one host only the file's name travels, and between
hosts the decode node's `kvcache` actor pulls the file into a staging file of its own, in
checksummed chunks (kvcache/actor.py). Files live on tmpfs (/dev/shm) where the host has
it, so they are memory, never disk.

A file is held under a lease: its owner removes it when the decode side is done with it
(a Release), and `sweep` removes any that outlived the lease (the decode node died, the
worker crashed half-way through writing). That is also how a killed node's files go: the
next sweep on that host removes them.

On a CUDA host the mapping is registered with CUDA while llama.cpp copies into or out of
it (pinned memory: its device<->host copies run at full speed); CuPy does that, imported
only where a GPU worker runs, and the CPU path is the same code without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any, TypeVar

log = logging.getLogger("inferflux.kvcache")

PREFIX = "inferflux-kv-"
_NAME = re.compile(r"^inferflux-kv-[0-9a-f]{24}$")
T = TypeVar("T")


class StagingError(Exception):
    """A staging file that cannot be made (no room on tmpfs) or is gone (released,
    expired): the handoff falls back to a local prefill."""


@cache
def directory() -> str:
    """/dev/shm where the host has it (Linux): memory that any process on the host maps.
    Elsewhere the temporary directory (macOS: the page cache does the same job)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


@cache
def host_id() -> str:
    """Who sees the same staging files: the kernel boot and the mount namespace. Two
    containers on one machine have different mount namespaces, so they pull (their
    /dev/shm differ), as do two `ip netns exec` shells."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        mounts = os.stat("/proc/self/ns/mnt").st_ino
    except OSError:  # not Linux: the host name, and the name check in `exists` decides
        return f"{socket.gethostname()}:{directory()}"
    return f"{boot_id}:{mounts}"


def new_name() -> str:
    return PREFIX + secrets.token_hex(12)


def path(name: str) -> str:
    """The file of staging name `name`. Names come from peers: anything but a staging
    name is refused, so no peer can name another file."""
    if not _NAME.match(name):
        raise StagingError(f"{name!r} is not a staging file name")
    return os.path.join(directory(), name)


def exists(name: str) -> bool:
    try:
        return os.path.exists(path(name))
    except StagingError:
        return False


def remove(name: str) -> bool:
    """Remove the file if it is still there; True when it was. A worker that mapped it
    keeps its mapping until it is done (the kernel frees the memory then)."""
    try:
        os.unlink(path(name))
    except (FileNotFoundError, StagingError):
        return False
    return True


def write(name: str, size: int, fill: Callable[[Any], int]) -> int:
    """Make staging file `name` of `size` bytes and let `fill(buffer)` write into its
    mapping (a ctypes byte array; llama.cpp writes there directly). Returns the bytes
    written; the file is cut to them. Raises StagingError when there is no room: the
    space is reserved first, because running out inside a tmpfs mapping is a SIGBUS."""
    fd = os.open(path(name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _reserve(fd, size, name)
        written = _mapped(fd, size, mmap.ACCESS_WRITE, fill)
        os.ftruncate(fd, written)
        return written
    except BaseException:
        remove(name)
        raise
    finally:
        os.close(fd)


def load(name: str, use: Callable[[Any, int], T]) -> T:
    """`use(buffer, size)` on a mapping of staging file `name` (private: llama.cpp reads
    it, nothing is copied unless written). StagingError when the file is gone."""
    try:
        fd = os.open(path(name), os.O_RDONLY)
    except FileNotFoundError:
        raise StagingError(f"staging file {name} is gone (released or expired)") from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return use((ctypes.c_uint8 * 0)(), 0)
        return _mapped(fd, size, mmap.ACCESS_COPY, lambda buffer: use(buffer, size))
    finally:
        os.close(fd)


def read(name: str, offset: int, length: int) -> bytes:
    """`length` bytes of the file from `offset` (a chunk a peer pulls)."""
    try:
        fd = os.open(path(name), os.O_RDONLY)
    except FileNotFoundError:
        raise StagingError(f"staging file {name} is gone (released or expired)") from None
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


@contextlib.contextmanager
def receiving(name: str, size: int) -> Iterator[Callable[[bytes, int], None]]:
    """Make staging file `name` of `size` bytes for chunks arriving in any order: yields
    `put(data, offset)`. The file is removed if the block raises."""
    fd = os.open(path(name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _reserve(fd, size, name)

        def put(data: bytes, offset: int) -> None:
            os.pwrite(fd, data, offset)

        yield put
    except BaseException:
        remove(name)
        raise
    finally:
        os.close(fd)


def sweep(older_than_s: float) -> list[str]:
    """Remove the staging files of this host last written more than `older_than_s` ago:
    leases that ran out. Returns their names."""
    removed = []
    cutoff = time.time() - older_than_s
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory()):
            if not _NAME.match(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff and remove(entry.name):
                    removed.append(entry.name)
    return removed


def _reserve(fd: int, size: int, name: str) -> None:
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except OSError as exc:
        raise StagingError(f"no room for a {size}-byte KV state in {directory()}: {exc}") from exc


def _mapped(fd: int, size: int, access: int, use: Callable[[Any], T]) -> T:
    """`use(buffer)` on a ctypes byte array over the file's mapping. The array must not
    outlive the call: a mapping cannot close while an array still points into it."""
    mapping = mmap.mmap(fd, size, access=access)
    try:
        buffer = (ctypes.c_uint8 * size).from_buffer(mapping)
        try:
            with _pinned(buffer):
                return use(buffer)
        finally:
            del buffer
    finally:
        mapping.close()


_cuda_runtime: Any = None


def use_cuda_pinning() -> None:
    """Register staging mappings with CUDA from now on (a worker that offloads layers to
    a GPU calls this at start). CuPy is the optional `gpu` extra: without it the copies
    simply run unpinned."""
    global _cuda_runtime
    try:
        import cupy  # noqa: PLC0415 - optional, CUDA hosts only

        _cuda_runtime = cupy.cuda.runtime
    except ImportError:
        log.info("CuPy is not installed: KV staging buffers are not pinned")


@contextlib.contextmanager
def _pinned(buffer: Any) -> Iterator[None]:
    if _cuda_runtime is None or not len(buffer):
        yield
        return
    address = ctypes.addressof(buffer)
    try:
        _cuda_runtime.hostRegister(address, len(buffer), 0)
    except Exception as exc:  # a mapping CUDA will not pin: copy unpinned
        log.warning("KV staging: cudaHostRegister failed (%s); copying unpinned", exc)
        yield
        return
    try:
        yield
    finally:
        _cuda_runtime.hostUnregister(address)
