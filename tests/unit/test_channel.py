"""Real nng sockets on all three schemes; no mocks."""

import os
from typing import Union

import msgspec
import pytest
import trio

from transports import (
    Channel,
    ChannelClosed,
    Codec,
    MessageDecodeError,
    SendTimeout,
    unique_address,
)


class Blob(msgspec.Struct, tag=True, array_like=True):
    n: int
    data: bytes = b""


Message = Union[Blob]
codec: Codec[Message] = Codec(Message)

SCHEMES = ["inproc", "ipc", "tcp"]


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_round_trip_and_peer_events(scheme: str) -> None:
    with Channel.listen(unique_address(scheme), codec) as server:
        with Channel.dial(server.address, codec) as client:
            await client.wait_connected(5)
            await server.wait_connected(5)
            event = await server.peer_events.receive()
            assert event.kind == "connected"
            for i in range(50):
                await client.send(Blob(i))
                received = await server.receive()
                assert received == Blob(i)
                await server.send(Blob(-i))
                assert await client.receive() == Blob(-i)
        # client closed: the server is told
        with trio.fail_after(5):
            await server.wait_disconnected()
        assert server.peers == 0


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_sixteen_mebibyte_message_passes(scheme: str) -> None:
    payload = os.urandom(16 * 1024 * 1024)
    with Channel.listen(unique_address(scheme), codec) as server:
        with Channel.dial(server.address, codec, send_timeout_s=30) as client:
            await client.wait_connected(5)
            await client.send(Blob(1, payload))
            with trio.fail_after(30):
                received = await server.receive()
            assert received.data == payload


async def test_malformed_bytes_raise_for_that_message_and_channel_keeps_working() -> None:
    with Channel.listen(unique_address("ipc"), codec, peer_label="peer-x") as server:
        with Channel.dial(server.address, codec) as client:
            await client.wait_connected(5)
            await client.send_bytes(b"\xc1 not msgpack")
            await client.send_bytes(msgspec.msgpack.encode(["Unknown", 1]))
            await client.send(Blob(7))
            with pytest.raises(MessageDecodeError, match="peer-x"):
                await server.receive()
            with pytest.raises(MessageDecodeError) as info:
                await server.receive()
            assert info.value.tag == "Unknown"
            assert await server.receive() == Blob(7)


async def test_send_to_absent_peer_is_bounded() -> None:
    # Dial an address nobody listens on: nng keeps retrying, our send gives up on time.
    with Channel.dial(unique_address("ipc"), codec) as lonely:
        start = trio.current_time()
        with pytest.raises(SendTimeout, match="not accepted within"):
            for _ in range(10_000):  # fills nng's buffer, then must time out
                await lonely.send(Blob(0), timeout_s=0.3)
        assert trio.current_time() - start < 5


async def test_send_to_peer_that_stopped_reading_is_bounded() -> None:
    with Channel.listen(unique_address("inproc"), codec) as server:
        with Channel.dial(server.address, codec) as client:
            await client.wait_connected(5)
            with pytest.raises(SendTimeout):
                for i in range(100_000):
                    await client.send(Blob(i, b"x" * 1024), timeout_s=0.3)


async def test_receive_wakes_with_error_when_closed_locally() -> None:
    with Channel.listen(unique_address("inproc"), codec) as server:
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.1)
                server.close()

            nursery.start_soon(close_soon)
            with trio.fail_after(5), pytest.raises(ChannelClosed):
                await server.receive()


async def test_tcp_port_zero_is_resolved_after_listen() -> None:
    with Channel.listen("tcp://127.0.0.1:0", codec) as server:
        assert server.address.port > 0
        with Channel.dial(server.address, codec) as client:
            await client.wait_connected(5)
            await client.send(Blob(3))
            assert await server.receive() == Blob(3)


@pytest.mark.parametrize("scheme", ["inproc", "ipc"])
async def test_many_tasks_sending_into_a_full_buffer_keep_the_sequence(scheme: str) -> None:
    # Sixteen tasks share one channel (a node link's callers, relays and heartbeats do):
    # while nng's buffer is full they wait their turn. A sequence number is given only to
    # a message nng took, so nothing reaches the peer out of order (a false LinkBroken),
    # and two tasks never wait on the same fd (trio.BusyResourceError).
    with Channel.listen(unique_address(scheme), codec) as server:
        with Channel.dial(server.address, codec, send_timeout_s=30) as client:
            await client.wait_connected(5)
            per_task, tasks = 300, 16
            async with trio.open_nursery() as nursery:
                for t in range(tasks):

                    async def send_all(t: int = t) -> None:
                        for i in range(per_task):
                            await client.send(Blob(t * per_task + i, b"x" * 512))

                    nursery.start_soon(send_all)
                got = []
                for _ in range(per_task * tasks):
                    got.append((await server.receive()).n)
                    if len(got) % 200 == 0:
                        await trio.sleep(0.01)  # a slow reader: the sender's buffer fills
            assert sorted(got) == list(range(per_task * tasks))
            for t in range(tasks):  # each task's own messages in its order
                mine = [n for n in got if n // per_task == t]
                assert mine == sorted(mine)
