"""Nodes (issue 18): actors on another node reached by name like local ones, their
protocols (replies, streams, refusals, runtime errors) the same across the link; a node
that dies or hangs fails what is in flight within the heartbeat timeout, never a hang, and
comes back up; a peer that restarted (new link addresses) is joined again, what was in
flight on the old channel fails with NodeDown; monitors follow a remote actor down and up;
heartbeats measure the round trip; the tree shows nodes, links and remote actors; mutual
TLS refuses (and logs) a peer without a certificate from the cluster CA or without TLS.
Across network namespaces: tests/integration/test_hosts.py."""

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

from actors import (
    ActorRef,
    ActorUnavailable,
    ChildSpec,
    JoinFailed,
    Node,
    NodeDown,
    Registry,
    Rejected,
    RemoteError,
    Supervisor,
)
from actors._node_wire import Beat, node_codec, send_frame
from inferflux.testing import free_port
from tests.policy_support import make_tls
from tests.support_actors import Count, Crash, Echo, EchoActor, Nope, Refuse, Sleep
from transports import TLS, Channel, ChannelClosed, Faults, SocketDir, unique_address

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


async def test_monitors_report_a_remote_actor_down_and_up_and_the_tree_shows_the_link() -> None:
    with SocketDir("ifx-test") as directory:
        home, away = Registry(), Registry()
        async with trio.open_nursery() as nursery:
            served = await nursery.start(Node("a", away, heartbeat_s=0.1).run)
            tree = Supervisor(
                "away", [ChildSpec("echo", lambda: EchoActor("echo", in_registry=away))]
            )
            await nursery.start(tree.run)
            door = await served.serve(str(unique_address("ipc", "door", directory)))
            node = await nursery.start(Node("b", home, heartbeat_s=0.1).run)
            link = await node.join(str(door))
            link.import_actor("echo", EchoActor, as_name="far-echo")
            await link.wait_up(timeout_s=10)
            monitor = link.monitor("echo")
            seen: list[tuple[bool, str]] = []
            monitor.on_change(lambda m: seen.append((m.up, m.why)))
            await monitor.wait_up(timeout_s=5)
            # The remote actor crashes: the watcher hears it, with the crash's reason,
            # then hears it come back when its supervisor restarted it.
            with pytest.raises(RemoteError):
                await ActorRef("far-echo", home).call(Crash("boom"))
            with trio.fail_after(5):
                while len(seen) < 3:
                    await trio.sleep(0.02)
            assert seen[0] == (True, "")
            assert seen[1][0] is False and "boom" in seen[1][1]
            assert seen[2] == (True, "")
            assert await ActorRef("far-echo", home).call(Echo("again")) == "again"
            with trio.fail_after(5):  # heartbeats measure the round trip
                while not link.round_trip_s:
                    await trio.sleep(0.05)
            assert 0 < link.round_trip_s < 0.5
            info = node.info()
            assert info.kind == "node" and info.state == "running"
            (link_info,) = info.children
            assert link_info.kind == "node-link" and link_info.name == "a"
            assert link_info.state == "running" and link_info.details["link"] == "up"
            assert link_info.details["address"] == str(link.channel.address)
            assert 0 < float(link_info.details["rtt_ms"]) < 500
            (remote,) = link_info.children
            assert (remote.name, remote.kind, remote.state) == ("far-echo", "remote", "running")
            assert remote.details == {"node": "a", "remote_name": "echo"}
            # A watched actor that stops for good is down; so is everything when its node is.
            tree.request_stop()
            await monitor.wait_down(timeout_s=5)
            assert "stopped" in monitor.why
            served.request_stop()
            await link.wait_down(timeout_s=5)
            assert not monitor.up
            down = node.info().children[0]
            assert down.state == "restarting" and down.details["link"] == "down"
            assert down.children[0].state == "stopped"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stranger", ["other CA", "plain tcp"])
async def test_a_peer_that_cannot_authenticate_is_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, stranger: str
) -> None:
    files = make_tls(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_tls(tmp_path / "other")
    async with trio.open_nursery() as nursery:
        door_node = Node("a", Registry(), tls=TLS(files.ca, files.cert, files.key))
        await nursery.start(door_node.run)
        door = await door_node.serve("tls+tcp://127.0.0.1:0")
        if stranger == "other CA":
            tls, address = TLS(other.ca, other.client_cert, other.client_key), str(door)
        else:  # plain tcp knocking on a tls door
            tls, address = None, f"tcp://127.0.0.1:{door.port}"
        knocker = Node("x", Registry(), tls=tls, knock_timeout_s=2)
        await nursery.start(knocker.run)
        with pytest.raises(JoinFailed, match="could not join"):
            await knocker.join(address)
        with trio.fail_after(5):  # the door's side logs the refusal from nng's counters
            while not door_node.refused_peers:
                await trio.sleep(0.1)
        assert "refused 1 peer(s) at tls+tcp://127.0.0.1" in caplog.text
        assert door_node.info().details["refused_peers"] == 1
        assert door_node.links == {}  # nobody got in
        nursery.cancel_scope.cancel()


async def test_the_round_trip_follows_a_delayed_link() -> None:
    # Where the kernel has no netem (test_hosts.py skips then), the same measurement with
    # the channel's own fault injection: every frame the far side sends waits 100 ms.
    with SocketDir("ifx-test") as directory:
        async with trio.open_nursery() as nursery:
            served = await nursery.start(Node("a", Registry(), heartbeat_s=0.1).run)
            door = await served.serve(str(unique_address("ipc", "door", directory)))
            node = await nursery.start(Node("b", Registry(), heartbeat_s=0.1).run)
            link = await node.join(str(door))
            await link.wait_up(timeout_s=10)
            with trio.fail_after(5):
                while not link.round_trip_s:
                    await trio.sleep(0.05)
            assert link.round_trip_s < 0.05
            served.links["b"].channel.faults = Faults(delay=1.0, delay_s=0.1)
            with trio.fail_after(5):
                while link.round_trip_s < 0.09:
                    await trio.sleep(0.05)
            assert link.round_trip_s < 0.3
            served.links["b"].channel.faults = None
            with trio.fail_after(5):
                while link.round_trip_s >= 0.05:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_a_restarted_node_is_joined_again_and_monitors_follow() -> None:
    # The peer's process dies and a new one opens the same door: its old link address is
    # gone with it, so the joined side knocks again and goes on over a new link.
    door = f"tcp://127.0.0.1:{free_port()}"
    peer, _ = start_peer(door)
    try:
        home = Registry()
        async with trio.open_nursery() as nursery:
            node = Node("b", home, heartbeat_s=0.1, down_after_s=1.0, rejoin_after_s=0.5)
            await nursery.start(node.run)
            link = await node.join(door)
            link.import_actor("echo", EchoActor)
            await link.wait_up(timeout_s=20)
            monitor = link.monitor("echo")
            await monitor.wait_up(timeout_s=5)
            echo = ActorRef("echo", home)
            failed: list[BaseException] = []

            async def in_flight() -> None:
                try:
                    await echo.call(Sleep(30), timeout_s=60)
                except NodeDown as exc:
                    failed.append(exc)

            nursery.start_soon(in_flight)
            old = link.channel
            first = (link.peer_epoch, str(old.address))
            await trio.sleep(0.3)  # the Sleep is in the peer's actor
            peer.kill()
            peer.wait()
            await link.wait_down(timeout_s=5)  # the connection closed: at once
            await monitor.wait_down(timeout_s=1)
            assert "is down" in monitor.why
            with trio.fail_after(1):
                while not failed:
                    await trio.sleep(0.05)
            with pytest.raises(NodeDown):
                await echo.call(Echo("anyone?"))
            peer, _ = start_peer(door)  # a new process at the same door
            await link.wait_up(timeout_s=20)
            assert (link.peer_epoch, str(link.channel.address)) != first
            with pytest.raises(ChannelClosed):  # the old channel was closed, not leaked
                await old.send_bytes(b"old")
            assert await echo.call(Echo("back")) == "back"
            await monitor.wait_up(timeout_s=5)  # watched again on the new link
            assert node.info().children[0].details["link"] == "up"
            nursery.cancel_scope.cancel()
        assert link.closed
        with pytest.raises(ChannelClosed):  # the node closed the new one with the link
            await link.channel.send_bytes(b"after")
    finally:
        peer.kill()
        peer.wait()


async def test_a_link_joined_again_while_up_fails_what_was_in_flight_on_the_old_channel() -> None:
    # A knock answered while the old link was still up (a peer that woke in time): the
    # peer's door cancels our old link there, and the link goes on over the new channel;
    # what waited on the old one fails with NodeDown, nothing hangs.
    with SocketDir("ifx-test") as directory:
        home, away = Registry(), Registry()
        async with trio.open_nursery() as nursery:
            served = await nursery.start(Node("a", away).run)
            await nursery.start(EchoActor("echo", in_registry=away).run)
            door = str(await served.serve(str(unique_address("ipc", "door", directory))))
            node = await nursery.start(Node("b", home, heartbeat_s=0.1).run)
            link = await node.join(door)
            link.import_actor("echo", EchoActor)
            await link.wait_up(timeout_s=10)
            monitor = link.monitor("echo")
            await monitor.wait_up(timeout_s=5)
            echo = ActorRef("echo", home)
            failed: list[BaseException] = []

            async def in_flight() -> None:
                try:
                    await echo.call(Sleep(1), timeout_s=60)
                except NodeDown as exc:
                    failed.append(exc)

            nursery.start_soon(in_flight)
            await trio.sleep(0.2)
            old = link.channel
            link.replace_channel(await node._knock(door))  # (the door closed the old one)
            assert not link.up and not monitor.up
            with trio.fail_after(1):  # NodeDown at once, not after the Sleep's second
                while not failed:
                    await trio.sleep(0.01)
            with pytest.raises(ChannelClosed):
                await old.send_bytes(b"old")
            await link.wait_up(timeout_s=10)
            assert await echo.call(Echo("again"), timeout_s=10) == "again"  # after the Sleep
            await monitor.wait_up(timeout_s=5)
            nursery.cancel_scope.cancel()


async def test_a_send_waiting_on_a_channel_closed_under_it_is_channel_closed() -> None:
    # A rejoin closes the old channel while a heartbeat may wait for room in its full
    # buffer (nobody connected to take it): that must read as ChannelClosed.
    with Channel.dial(f"tcp://127.0.0.1:{free_port()}", node_codec) as channel:
        outcome: list[BaseException] = []

        async def fill() -> None:
            try:
                while True:
                    await send_frame(channel, Beat(), timeout_s=30)
            except Exception as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fill)
            await trio.sleep(0.3)  # the buffer is full: the send waits for room
            assert not outcome
            channel.close()
        assert len(outcome) == 1 and isinstance(outcome[0], ChannelClosed), outcome
