"""The kvcache actor's handoffs (kvcache/actor.py), two real actors and real staging
files: a decode node's kvcache ("here", on another host) pulls a prefill node's state
from its kvcache ("there") in checksummed chunks. A corrupted chunk, a state already gone
or a holder that is gone is refused (the scheduler then prefills locally) and leaves no
file here; a state nobody releases is removed when its lease runs out. Real node links
carry the same messages in tests/integration/test_hosts_disagg.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from actors import ActorRef, ChildSpec, Envelope, Registry, Rejected, Supervisor
from inferflux.kvcache import staging
from inferflux.kvcache.actor import KVCache
from inferflux.kvcache.messages import Fetched, FetchKV, KVChunk, PullKV, TransferFailed
from inferflux.messages import KVState
from tests.unit.test_scheduler import wait_for


class Corrupting(KVCache):
    """A holder whose chunk at `offset` arrives with one byte changed (a bad link or a
    file changed under it): its checksum no longer matches."""

    def __init__(self, name: str, offset: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.offset = offset

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        reply = await super().handle(message, envelope)
        if isinstance(message, PullKV) and message.offset == self.offset:
            assert isinstance(reply, KVChunk)
            return KVChunk(bytes([reply.data[0] ^ 1]) + reply.data[1:], reply.crc32)
        return reply


def exported(size: int) -> tuple[KVState, bytes]:
    data = os.urandom(size)
    name = staging.new_name()

    def fill(buffer: Any) -> int:
        buffer[:size] = data
        return size

    staging.write(name, size, fill)
    return KVState("model", 10, name, size, staging.host_id()), data


@asynccontextmanager
async def two_nodes(
    there: Callable[[Registry], KVCache] = lambda r: KVCache("there", in_registry=r),
) -> AsyncIterator[tuple[Registry, Supervisor]]:
    registry = Registry()
    here = ("here", "another host", 1000, 3)  # name, host, chunk_bytes, window
    children = [
        ChildSpec("there", lambda: there(registry)),
        ChildSpec(
            "here",
            lambda: KVCache(
                here[0], host=here[1], chunk_bytes=here[2], window=here[3], in_registry=registry
            ),
        ),  # fmt: skip
    ]
    root = Supervisor("root", children)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        yield registry, root
        root.request_stop()


def local_files() -> set[str]:
    return {entry for entry in os.listdir(staging.directory()) if entry.startswith(staging.PREFIX)}


async def test_a_state_is_pulled_in_chunks_and_the_holders_copy_released() -> None:
    state, data = exported(10_500)  # ten full chunks and a short one
    async with two_nodes() as (registry, _):
        fetched = await ActorRef("here", registry).call(FetchKV("there", state))
        assert isinstance(fetched, Fetched) and fetched.pulled
        copy = fetched.state
        assert (copy.fingerprint, copy.n_tokens, copy.size) == ("model", 10, 10_500)
        assert copy.host == "another host" and copy.name != state.name
        assert staging.load(copy.name, lambda buffer, size: bytes(buffer[:size])) == data
        await wait_for(lambda: not staging.exists(state.name))  # released there
        staging.remove(copy.name)


@pytest.mark.parametrize("what", ["corrupted chunk", "gone", "no holder"])
async def test_a_state_that_cannot_come_is_refused_and_leaves_nothing(what: str) -> None:
    state, _ = exported(5_000)
    offset = 2000 if what == "corrupted chunk" else -1
    before = local_files() - {state.name}
    if what == "gone":
        staging.remove(state.name)
    async with two_nodes(lambda r: Corrupting("there", offset, in_registry=r)) as (registry, _):
        holder = "nobody" if what == "no holder" else "there"
        with pytest.raises(Rejected) as refused:
            await ActorRef("here", registry).call(FetchKV(holder, state))
        assert isinstance(refused.value.error, TransferFailed)
        why = {"corrupted chunk": "checksum", "gone": "gone", "no holder": "nobody"}[what]
        assert why in refused.value.error.message
        assert local_files() - {state.name} == before  # no partial copy left here
    staging.remove(state.name)


async def test_a_state_nobody_releases_goes_when_its_lease_runs_out() -> None:
    """A decode node that died between the answer and its pull leaves the state there:
    the holder removes it after lease_s, and keeps serving."""
    state, _ = exported(100)
    async with two_nodes(lambda r: KVCache("there", lease_s=0.5, in_registry=r)) as (_, root):
        with trio.fail_after(5):
            while staging.exists(state.name):
                await trio.sleep(0.05)
        assert root.child("there").details()["leases_expired"] >= 1
