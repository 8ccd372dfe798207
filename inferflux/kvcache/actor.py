"""kvcache: this node's KV handoffs in flight (disaggregated prefill, issue 14).

Every clustered node runs one per served model, beside its scheduler.
- On a prefill node it holds the exported states under leases: its worker writes each
  into a staging file (kvcache/staging.py) and the answer to the decode node carries only
  the file's name. Decode nodes pull it from here in chunks (PullKV), each with a
  checksum, and release it (ReleaseKV). A file nobody released is removed once its lease
  runs out (`lease_s` after it was written): a decode node that died mid-handoff leaves
  nothing behind.
- On a decode node it brings a prefill node's state here for its scheduler (FetchKV).
  On the same host (staging.host_id) the worker maps the prefill node's file itself:
  nothing is copied. Across hosts it pulls the file with up to `window` chunks in flight
  (the credit window: the link never carries more than window x chunk_bytes of KV at
  once, so its heartbeats are never stuck behind a whole state), writes the chunks into a
  staging file of this node, and releases the prefill node's. A chunk that fails its
  checksum, a holder that is gone, refuses or takes longer than `fetch_timeout_s`, or no
  room here: the fetch is refused and the scheduler prefills the prompt itself.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from typing import Any

import trio

from actors import Actor, ActorError, ActorRef, Envelope, Rejected

from ..messages import KVState
from . import staging
from .messages import (
    Fetched,
    FetchKV,
    KVCacheMessage,
    KVCacheReply,
    KVChunk,
    PullKV,
    ReleaseKV,
    TransferFailed,
)

log = logging.getLogger("inferflux.kvcache")

CHUNK_BYTES = 4 << 20
WINDOW = 4


class KVCache(Actor):
    mailbox_capacity = 1024
    message_type = KVCacheMessage
    reply_type = KVCacheReply
    error_type = TransferFailed

    def __init__(
        self,
        name: str = "kvcache",
        *,
        lease_s: float = 30.0,
        fetch_timeout_s: float = 30.0,
        window: int = WINDOW,
        chunk_bytes: int = CHUNK_BYTES,
        host: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.lease_s, self.fetch_timeout_s = lease_s, fetch_timeout_s
        self.window, self.chunk_bytes = window, chunk_bytes
        self.host = host or staging.host_id()
        self.fetching = 0  # transfers in flight (top shows them)
        self.fetched = self.pulled = 0
        self.pulled_bytes = self.served_bytes = 0
        self.expired = 0  # leases that ran out: nobody released the file

    async def started(self) -> None:
        self.nursery.start_soon(self._expire_leases)

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        match message:
            case PullKV():
                return self._chunk(message, envelope)
            case ReleaseKV(name):
                staging.remove(name)
            case FetchKV():
                envelope.defer()
                self.fetching += 1
                self.nursery.start_soon(self._fetch, message, envelope)
        return None

    def _refuse(self, envelope: Envelope, why: str) -> None:
        envelope.fail(Rejected(self.name, TransferFailed(why)))

    def _chunk(self, pull: PullKV, envelope: Envelope) -> KVChunk | None:
        try:
            data = staging.read(pull.name, pull.offset, pull.length)
        except staging.StagingError as exc:
            self._refuse(envelope, str(exc))
            return None
        self.served_bytes += len(data)
        return KVChunk(data, zlib.crc32(data))

    async def _fetch(self, fetch: FetchKV, envelope: Envelope) -> None:
        started = time.monotonic()
        holder = ActorRef(fetch.holder, self.registry)
        try:
            state, pulled = await self._bring_here(holder, fetch.state)
        except (ActorError, Rejected, staging.StagingError, _PullFailed) as exc:
            log.warning("KV state %s from %s: %s", fetch.state.name, fetch.holder, exc)
            self._refuse(envelope, f"the KV state could not be brought here: {exc}")
        else:
            self.fetched += 1
            envelope.reply(Fetched(state, time.monotonic() - started, pulled))
        finally:
            self.fetching -= 1

    async def _bring_here(self, holder: ActorRef, state: KVState) -> tuple[KVState, bool]:
        if state.host == self.host and staging.exists(state.name):
            return state, False  # one host: the worker maps the prefill node's file
        name = staging.new_name()
        try:
            # receiving() removes the partial file when the pull fails or is cut short.
            with trio.move_on_after(self.fetch_timeout_s) as timer:
                with staging.receiving(name, state.size) as put:
                    await self._pull(holder, state, put)
            if timer.cancelled_caught:
                raise _PullFailed(f"not pulled within {self.fetch_timeout_s:.0f}s")
        finally:
            with contextlib.suppress(ActorError):  # gone with its node: its lease ends it
                holder.cast_nowait(ReleaseKV(state.name))
        self.pulled += 1
        self.pulled_bytes += state.size
        return KVState(state.fingerprint, state.n_tokens, name, state.size, self.host), True

    async def _pull(self, holder: ActorRef, state: KVState, put: Any) -> None:
        """Every chunk of the state, `window` at a time; the first failure ends them all."""
        offsets = iter(range(0, state.size, self.chunk_bytes))
        failures: list[BaseException] = []

        async def puller(cancel: trio.CancelScope) -> None:
            try:
                for offset in offsets:  # shared: each puller takes the next chunk
                    length = min(self.chunk_bytes, state.size - offset)
                    chunk = await holder.call(PullKV(state.name, offset, length))
                    assert isinstance(chunk, KVChunk)
                    if len(chunk.data) != length or zlib.crc32(chunk.data) != chunk.crc32:
                        raise _PullFailed(f"the chunk at {offset} failed its checksum")
                    put(chunk.data, offset)
            except (ActorError, Rejected, _PullFailed) as exc:
                failures.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for _ in range(self.window):
                nursery.start_soon(puller, nursery.cancel_scope)
        if failures:
            raise failures[0]

    async def _expire_leases(self) -> None:
        while True:
            for name in staging.sweep(self.lease_s):
                self.expired += 1
                log.info("KV state %s: its lease ran out, removed", name)
            await trio.sleep(min(1.0, self.lease_s / 4))

    def details(self) -> dict[str, float | int | str]:
        return {
            "transfers": self.fetching,
            "fetched": self.fetched,
            "pulled": self.pulled,
            "pulled_bytes": self.pulled_bytes,
            "served_bytes": self.served_bytes,
            "leases_expired": self.expired,
        }


class _PullFailed(Exception):
    """A pulled chunk that is not what was sent, or a pull that took too long."""
