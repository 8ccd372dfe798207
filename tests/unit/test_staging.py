"""Staging files (kvcache/staging.py): what a KV state waits in between two workers. Real
files in the real staging directory (/dev/shm here)."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator

import pytest

from inferflux.kvcache import staging


@pytest.fixture
def name() -> Iterator[str]:
    name = staging.new_name()
    yield name
    staging.remove(name)


def fill_with(data: bytes):  # type: ignore[no-untyped-def]
    def fill(buffer: ctypes.Array[ctypes.c_uint8]) -> int:
        ctypes.memmove(buffer, data, len(data))
        return len(data)

    return fill


def test_written_through_the_mapping_and_read_back(name: str) -> None:
    data = os.urandom(100_000)
    # llama.cpp may write less than it reserved: the file is cut to what was written.
    assert staging.write(name, 150_000, fill_with(data)) == len(data)
    assert os.path.getsize(staging.path(name)) == len(data)
    assert staging.load(name, lambda buffer, size: bytes(buffer[:size])) == data
    assert staging.read(name, 4_000, 1_000) == data[4_000:5_000]
    assert staging.remove(name) and not staging.exists(name)
    assert not staging.remove(name)  # a second release finds nothing, quietly


def test_chunks_arrive_in_any_order(name: str) -> None:
    data = os.urandom(10_000)
    with staging.receiving(name, len(data)) as put:
        for offset in (8_000, 0, 4_000):
            put(data[offset : offset + 4_000], offset)
    assert staging.load(name, lambda buffer, size: bytes(buffer[:size])) == data


def test_a_failed_receive_leaves_no_file(name: str) -> None:
    with pytest.raises(RuntimeError), staging.receiving(name, 1_000) as put:
        put(b"x" * 10, 0)
        raise RuntimeError("a chunk failed its checksum")
    assert not staging.exists(name)


def test_only_staging_names_are_files() -> None:
    """Names come from peers: none may reach another file."""
    for bad in ("../../etc/passwd", "inferflux-kv-../x", "/etc/passwd", "inferflux-kv-XYZ"):
        with pytest.raises(staging.StagingError):
            staging.path(bad)
        with pytest.raises(staging.StagingError):
            staging.read(bad, 0, 10)
        assert not staging.exists(bad) and not staging.remove(bad)


def test_a_state_with_no_room_is_refused_and_leaves_no_file(name: str) -> None:
    """Space is reserved before llama.cpp writes: running out inside a tmpfs mapping
    would be a SIGBUS in the worker, not an error."""
    with pytest.raises(staging.StagingError, match="no room"):
        staging.write(name, 1 << 50, fill_with(b"never written"))
    assert not staging.exists(name)


def test_a_gone_file_is_a_staging_error(name: str) -> None:
    with pytest.raises(staging.StagingError, match="gone"):
        staging.load(name, lambda buffer, size: size)


def test_sweep_removes_only_expired_staging_files(name: str) -> None:
    fresh = staging.new_name()
    try:
        staging.write(name, 10, fill_with(b"0123456789"))
        staging.write(fresh, 10, fill_with(b"0123456789"))
        an_hour_ago = time.time() - 3600
        os.utime(staging.path(name), (an_hour_ago, an_hour_ago))
        removed = staging.sweep(older_than_s=60)
        assert name in removed and fresh not in removed
        assert not staging.exists(name) and staging.exists(fresh)
    finally:
        staging.remove(fresh)
