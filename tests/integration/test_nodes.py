"""Nodes (issue 18): actors on another node reached by name like local ones, their
protocols (replies, streams, refusals, runtime errors) the same across the link; a node
that dies or hangs fails what is in flight within the heartbeat timeout, never a hang, and
comes back up; mutual TLS refuses a peer without a certificate from the cluster CA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from actors import ActorRef, ActorUnavailable, Node, NodeDown, Registry, Rejected
from tests.policy_support import make_tls
from tests.support_actors import Count, Echo, EchoActor, Nope, Refuse, Sleep
from transports import TLS, SocketDir, unique_address

DOWN_AFTER_S = 1.5

PEER = textwrap.dedent(
    """
    import sys, trio
    from actors import Node, Registry
    from tests.support_actors import EchoActor
    from transports import TLS

    async def main(address, tls_files):
        registry = Registry()
        tls = TLS(*tls_files.split(",")) if tls_files else None
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node("peer", registry, tls=tls).run)
            await nursery.start(EchoActor("echo", in_registry=registry).run)
            bound = await node.serve(address)
            print(bound, flush=True)

    trio.run(main, sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
    """
)


def start_peer(address: str, tls: str = "") -> tuple[subprocess.Popen, str]:
    peer = subprocess.Popen(
        [sys.executable, "-c", PEER, address, tls],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    return peer, peer.stdout.readline().strip()


async def test_an_actor_on_another_node_answers_like_a_local_one() -> None:
    with SocketDir("ifx-test") as directory:
        home, away = Registry(), Registry()
        async with trio.open_nursery() as nursery:
            served = await nursery.start(Node("a", away).run)
            await nursery.start(EchoActor("echo", in_registry=away).run)
            door = await served.serve(str(unique_address("ipc", "door", directory)))
            node = await nursery.start(Node("b", home).run)
            link = await node.join(str(door))
            link.import_actor("echo", EchoActor)
            await link.wait_up(timeout_s=10)
            echo = ActorRef("echo", home)
            assert await echo.call(Echo("over the link")) == "over the link"
            async with echo.stream(Count(3)) as items:
                assert [item async for item in items] == [0, 1, 2]
            with pytest.raises(Rejected) as refused:  # the protocol's own refusal Struct
                await echo.call(Refuse("no thanks"))
            assert refused.value.error == Nope("no thanks")
            link.import_actor("nobody", EchoActor)  # a name the peer does not run
            with pytest.raises(ActorUnavailable):
                await ActorRef("nobody", home).call(Echo("hello?"))
            assert link.up and link.peer == "a"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
async def test_a_dead_or_hung_node_fails_calls_in_flight_within_the_timeout(how: str) -> None:
    with SocketDir("ifx-test") as directory:
        peer, door = start_peer(str(unique_address("ipc", "door", directory)))
        try:
            home = Registry()
            async with trio.open_nursery() as nursery:
                node = Node("b", home, heartbeat_s=0.25, down_after_s=DOWN_AFTER_S)
                await nursery.start(node.run)
                link = await node.join(door)
                link.import_actor("echo", EchoActor)
                await link.wait_up(timeout_s=20)
                echo = ActorRef("echo", home)
                failed: list[tuple[BaseException, float]] = []

                async def in_flight() -> None:
                    try:
                        await echo.call(Sleep(5), timeout_s=60)
                    except NodeDown as exc:
                        failed.append((exc, time.monotonic()))

                nursery.start_soon(in_flight)
                await trio.sleep(0.5)
                peer.send_signal(getattr(signal, how))
                sent = time.monotonic()
                with trio.fail_after(DOWN_AFTER_S + 5):  # never a hang
                    while not failed:
                        await trio.sleep(0.05)
                assert failed[0][1] - sent < DOWN_AFTER_S + 2
                with pytest.raises(NodeDown):  # new calls fail at once while it is down
                    await echo.call(Echo("anyone?"))
                if how == "SIGSTOP":  # a hang that ends: the link comes back up
                    peer.send_signal(signal.SIGCONT)
                    await link.wait_up(timeout_s=10)
                    # (after the echo actor finished the sleep it was still in)
                    assert await echo.call(Echo("back"), timeout_s=20) == "back"
                nursery.cancel_scope.cancel()
        finally:
            peer.kill()
            peer.wait()


async def test_mutual_tls_links_and_a_refused_stranger(tmp_path: Path) -> None:
    files = make_tls(tmp_path)
    # The peer listens with the server certificate; we dial with the client one.
    peer, door = start_peer("tls+tcp://127.0.0.1:0", f"{files.ca},{files.cert},{files.key}")
    try:
        home = Registry()
        client_tls = TLS(files.ca, files.client_cert, files.client_key)
        async with trio.open_nursery() as nursery:
            node = await nursery.start(Node("b", home, tls=client_tls).run)
            link = await node.join(door)
            link.import_actor("echo", EchoActor)
            await link.wait_up(timeout_s=20)
            assert await ActorRef("echo", home).call(Echo("sealed")) == "sealed"
            # A stranger: a certificate from another CA is refused by the handshake.
            (tmp_path / "other").mkdir()
            other = make_tls(tmp_path / "other")
            stranger = await nursery.start(
                Node("x", Registry(), tls=TLS(other.ca, other.client_cert, other.client_key)).run
            )
            with pytest.raises(Exception):  # noqa: B017 - the knock never gets an answer
                await stranger.join(door)
            nursery.cancel_scope.cancel()
    finally:
        peer.kill()
        peer.wait()


def test_plain_tcp_off_loopback_needs_insecure() -> None:
    node = Node("b", Registry())
    with pytest.raises(ValueError, match="tls\\+tcp"):
        node._checked("tcp://10.1.2.3:9000")
    assert Node("b", Registry(), insecure=True)._checked("tcp://10.1.2.3:9000").port == 9000
