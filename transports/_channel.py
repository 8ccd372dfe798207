"""A message channel over one pynng Pair0 socket, the same API for inproc, ipc and tcp.

Why receive through `recv_fd`: `await socket.arecv()` hops to a thread for every call
(~580 us per round trip here); waiting on nng's notification fd with
`trio.lowlevel.wait_readable` and then calling the non-blocking `recv` stays on the Trio
thread (~110 us inproc). Sends are non-blocking first and wait on `send_fd` only when nng's
buffer is full, always under a deadline so a dead peer cannot hang the sender.
"""

from __future__ import annotations

import math
import secrets
import socket
import struct
from typing import Generic, Literal, TypeVar

import msgspec
import pynng
import trio

from ._address import Address, parse_address
from ._codec import Codec, MessageDecodeError
from ._faults import FaultInjector, Faults
from ._stats import endpoint_counters

M = TypeVar("M")

DEFAULT_RECV_MAX_SIZE = 256 * 1024 * 1024  # KV blobs are tens of MB; nng drops larger silently
DEFAULT_SEND_TIMEOUT_S = 5.0
RECONNECT_MIN_MS = 20
RECONNECT_MAX_MS = 1000
BUFFER_MESSAGES = 256
YIELD_EVERY = 32


class SendTimeout(TimeoutError):
    """The peer did not take a message within the send deadline (gone, stuck, or absent)."""


class ChannelClosed(Exception):
    """The channel was closed locally."""


class LinkBroken(Exception):
    """Messages from the peer went missing (a gap in its sequence numbers): whatever the
    two ends were doing together can no longer be trusted, so the link must be rebuilt."""

    def __init__(self, peer: str, expected: int, got: int) -> None:
        super().__init__(
            f"link to {peer} lost {got - expected} message(s) (expected #{expected}, got #{got})"
        )


# Every message carries the sender's epoch (random per channel) and a sequence number, so
# the receiver discards duplicates and notices loss, whatever the transport does.
_HEADER = struct.Struct("<QQ")


class TLS(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Mutual TLS for tls+tcp:// links: both ends present a certificate signed by the
    cluster CA, and refuse a peer that does not."""

    ca_file: str
    cert_file: str
    key_file: str
    server_name: str = ""
    """The name the dialing side expects in the listener's certificate (default: the
    address's host)."""

    def config(self, server: bool, host: str) -> pynng.TLSConfig:
        def read(path: str) -> str:
            with open(path) as f:
                return f.read()

        mode = pynng.TLSConfig.MODE_SERVER if server else pynng.TLSConfig.MODE_CLIENT
        return pynng.TLSConfig(
            mode,
            server_name=None if server else (self.server_name or host),
            ca_string=read(self.ca_file),
            own_cert_string=read(self.cert_file),
            own_key_string=read(self.key_file),
            auth_mode=pynng.TLSConfig.AUTH_MODE_REQUIRED,
        )


class PeerEvent(msgspec.Struct, frozen=True):
    kind: Literal["connected", "disconnected"]
    pipe_id: int


class Channel(Generic[M]):
    """Bidirectional message channel to one peer.

    Build with `Channel.listen(...)` or `Channel.dial(...)`; use as a context manager (or call
    `close()`) so the socket is always released. Must be created inside a Trio run: peer
    events from nng's threads are handed to Trio through its token.
    """

    def __init__(
        self,
        address: Address,
        codec: Codec[M],
        *,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        recv_max_size: int = DEFAULT_RECV_MAX_SIZE,
        peer_label: str = "",
        restrict_peers: bool = False,
    ) -> None:
        self.address = address
        self.codec = codec
        self.send_timeout_s = send_timeout_s
        self.peer_label = peer_label or str(address)
        self._socket = pynng.Pair0(
            recv_max_size=recv_max_size,
            reconnect_time_min=RECONNECT_MIN_MS,
            reconnect_time_max=RECONNECT_MAX_MS,
            recv_buffer_size=BUFFER_MESSAGES,
            send_buffer_size=BUFFER_MESSAGES,
        )
        self._recv_fd = self._socket.recv_fd
        self._send_fd = self._socket.send_fd
        self._closed = False
        self.endpoint: pynng.Listener | pynng.Dialer | None = None
        self._receives_without_yield = 0
        self._epoch = secrets.randbits(64)
        self._sent = 0
        self._send_lock = trio.Lock()
        self._send_waiters = 0
        self._peer_epoch = -1
        self._expected = 0
        self.duplicates_dropped = 0
        self.duplicates_sent = 0  # fault injection: copies nng took (a full buffer drops one)
        self._injector: FaultInjector | None = None
        self._pending_duplicate: bytes | None = None
        self._token = trio.lowlevel.current_trio_token()
        self._events_in, self._events_out = trio.open_memory_channel[PeerEvent](64)
        self.peers = 0
        self._peer_changed = trio.Event()
        # ipc peers can be told apart by their process id (the kernel's credentials for
        # the socket): a restricted channel takes only the one `accept_only` names.
        self.restricted = restrict_peers and address.scheme == "ipc"
        self._allowed_pid: int | None = None
        self.refused_peers = 0
        if self.restricted:
            self._socket.add_pre_pipe_connect_cb(self._check_peer)
        self._socket.add_post_pipe_connect_cb(lambda pipe: self._from_nng("connected", pipe))
        self._socket.add_post_pipe_remove_cb(lambda pipe: self._from_nng("disconnected", pipe))

    # construction ------------------------------------------------------------------
    @classmethod
    def listen(
        cls, address: Address | str, codec: Codec[M], tls: TLS | None = None, **kwargs: object
    ) -> Channel[M]:
        addr = parse_address(address) if isinstance(address, str) else address
        channel = cls(addr, codec, **kwargs)  # type: ignore[arg-type]
        try:
            channel._secure(tls, server=True)
            listener = channel.endpoint = channel._socket.listen(str(addr))
            if addr.scheme in ("tcp", "tls+tcp") and addr.port == 0:
                port = socket.ntohs(listener.local_address.port)
                channel.address = Address(addr.scheme, host=addr.host, port=port)
        except BaseException:
            channel.close()
            raise
        return channel

    @classmethod
    def dial(
        cls, address: Address | str, codec: Codec[M], tls: TLS | None = None, **kwargs: object
    ) -> Channel[M]:
        """Dial in the background: nng connects (and reconnects) with back-off by itself."""
        addr = parse_address(address) if isinstance(address, str) else address
        channel = cls(addr, codec, **kwargs)  # type: ignore[arg-type]
        try:
            channel._secure(tls, server=False)
            channel.endpoint = channel._socket.dial(str(addr), block=False)
        except BaseException:
            channel.close()
            raise
        return channel

    def _secure(self, tls: TLS | None, server: bool) -> None:
        if self.address.scheme != "tls+tcp":
            if tls is not None:
                raise ValueError(f"TLS settings given for {self.address}, which is not tls+tcp")
            return
        if tls is None:
            raise ValueError(f"{self.address} needs TLS settings (ca, cert, key)")
        self._socket.tls_config = tls.config(server, self.address.host)

    # who may connect -----------------------------------------------------------------
    def accept_only(self, pid: int) -> None:
        """Take an ipc peer only if it is process `pid`; every other is closed as it
        connects (a restricted channel takes nobody before this is called)."""
        self._allowed_pid = pid

    def _check_peer(self, pipe: pynng.Pipe) -> None:
        """Runs on nng's thread before the pipe joins the socket."""
        pid = pynng.ffi.new("uint64_t *")
        known = pynng.lib.nng_pipe_get_uint64(pipe.pipe, b"ipc:peer-pid", pid) == 0
        if not known or self._allowed_pid is None or pid[0] != self._allowed_pid:
            self.refused_peers += 1
            pipe.close()

    def counters(self) -> dict[str, int]:
        """nng's counters for this channel's listener or dialer (transports._stats), e.g.
        `auth`: peers refused by the TLS handshake."""
        if self._closed or self.endpoint is None:
            return {}
        return endpoint_counters(self.endpoint)

    # fault injection (chaos testing) -----------------------------------------------
    @property
    def faults(self) -> Faults | None:
        return self._injector.faults if self._injector else None

    @faults.setter
    def faults(self, faults: Faults | None) -> None:
        self._injector = FaultInjector(faults) if faults is not None and faults.active else None

    # peers -------------------------------------------------------------------------
    def _from_nng(self, kind: Literal["connected", "disconnected"], pipe: pynng.Pipe) -> None:
        # Runs on an nng thread: never touch Trio state here, only schedule onto Trio.
        event = PeerEvent(kind, int(pipe.id))
        try:
            self._token.run_sync_soon(self._on_peer_event, event)
        except trio.RunFinishedError:
            pass

    def _on_peer_event(self, event: PeerEvent) -> None:
        self.peers += 1 if event.kind == "connected" else -1
        self._peer_changed.set()
        self._peer_changed = trio.Event()
        try:
            self._events_in.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # nobody is reading events; the counter above still tells the truth

    @property
    def peer_events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        return self._events_out

    async def wait_connected(self, timeout_s: float = math.inf) -> None:
        with trio.fail_after(timeout_s):
            while self.peers <= 0:
                await self._peer_changed.wait()

    async def wait_disconnected(self) -> None:
        while self.peers > 0:
            await self._peer_changed.wait()

    # data --------------------------------------------------------------------------
    async def send(self, message: M, timeout_s: float | None = None) -> None:
        await self.send_bytes(self.codec.encode(message), timeout_s)

    async def send_bytes(self, data: bytes, timeout_s: float | None = None) -> None:
        injector = self._injector
        if injector is None:
            await self._send_framed(data, timeout_s, 1)
            return
        delay = injector.delay_s()
        if delay:
            await trio.sleep(delay)
        copies = injector.copies()
        if copies == 0:
            self._sent += 1  # lost on the way: the peer sees the gap
            return
        await self._send_framed(data, timeout_s, copies)

    async def _send_framed(self, data: bytes, timeout_s: float | None, copies: int) -> None:
        """Send `copies` copies of one message under one sequence number.

        The number is taken only when nng accepts the message, never before a wait: a
        message numbered and then held back while another task's later number went first
        would look like a loss to the peer. Tasks that find the buffer full queue on a
        fair lock, one at a time on the fd (two tasks waiting on one fd is an error in
        Trio), and later senders queue behind them rather than overtake."""
        deadline = self.send_timeout_s if timeout_s is None else timeout_s
        await trio.lowlevel.checkpoint_if_cancelled()
        # A successful non-blocking send skips the scheduler yield: checking for
        # cancellation above keeps it a cancellation point, and the next receive (or any
        # other await) schedules.
        if not self._send_waiters and self._try_send(data, copies):
            return
        self._send_waiters += 1
        try:
            with trio.move_on_after(deadline) as scope:
                async with self._send_lock:
                    while not self._try_send(data, copies):
                        await trio.lowlevel.wait_readable(self._send_fd)
                    return
        finally:
            self._send_waiters -= 1
        if scope.cancelled_caught:
            raise SendTimeout(
                f"send to {self.peer_label} not accepted within {deadline:.3g}s "
                f"(peers connected: {self.peers})"
            )

    def _try_send(self, data: bytes, copies: int) -> bool:
        """One non-blocking attempt: True once nng took the message (numbered now)."""
        framed = _HEADER.pack(self._epoch, self._sent) + data
        try:
            self._socket.send(framed, block=False)
        except pynng.TryAgain:
            return False
        except pynng.Closed:
            raise ChannelClosed(str(self.address)) from None
        self._sent += 1
        for _ in range(copies - 1):  # a duplicate: same number, dropped by the peer
            try:
                self._socket.send(framed, block=False)
                self.duplicates_sent += 1
            except (pynng.TryAgain, pynng.Closed):
                pass
        return True

    async def receive(self) -> M:
        """Next message. MessageDecodeError for a bad one; the channel stays usable."""
        return self.codec.decode(await self.receive_bytes(), self.peer_label)

    async def receive_bytes(self) -> memoryview:
        """Next message's payload (a view past the header, no copy), in order, each
        exactly once; LinkBroken on a gap."""
        while True:
            framed = await self._receive_faulty()
            payload = self._accept(framed)
            if payload is not None:
                return payload

    def _accept(self, framed: bytes) -> memoryview | None:
        """Check the sequence number: the payload, or None for a duplicate."""
        if len(framed) < _HEADER.size:
            raise MessageDecodeError(self.peer_label, None, "shorter than a header", len(framed))
        epoch, number = _HEADER.unpack_from(framed)
        if epoch != self._peer_epoch:  # a new peer (or the peer's first message)
            self._peer_epoch, self._expected = epoch, 0
        if number < self._expected:
            self.duplicates_dropped += 1
            return None
        if number > self._expected:
            expected, self._expected = self._expected, number + 1  # go on from here
            raise LinkBroken(self.peer_label, expected, number)
        self._expected += 1
        return memoryview(framed)[_HEADER.size :]

    async def _receive_faulty(self) -> bytes:
        injector = self._injector
        if injector is None:
            return await self._receive_raw()
        if self._pending_duplicate is not None:
            data, self._pending_duplicate = self._pending_duplicate, None
            return data
        while True:
            data = await self._receive_raw()
            delay = injector.delay_s()
            if delay:
                await trio.sleep(delay)
            copies = injector.copies()
            if copies:
                if copies == 2:
                    self._pending_duplicate = data
                return data

    async def _receive_raw(self) -> bytes:
        # Like send, a message that is already queued returns without a scheduler yield
        # (cancellation is still checked); a receiver draining a busy peer still yields
        # every YIELD_EVERY messages so it cannot starve the other tasks.
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                data = self._socket.recv(block=False)
            except pynng.TryAgain:
                self._receives_without_yield = 0
            except pynng.Closed:
                raise ChannelClosed(str(self.address)) from None
            else:
                self._receives_without_yield += 1
                if self._receives_without_yield >= YIELD_EVERY:
                    self._receives_without_yield = 0
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            try:
                await trio.lowlevel.wait_readable(self._recv_fd)
            except (trio.ClosedResourceError, OSError):
                raise ChannelClosed(str(self.address)) from None

    # lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Wake anything blocked in wait_readable on our fds before nng closes them.
        for fd in (self._recv_fd, self._send_fd):
            try:
                trio.lowlevel.notify_closing(fd)
            except (RuntimeError, ValueError):
                pass
        self._socket.close()
        self._events_in.close()

    def __enter__(self) -> Channel[M]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
