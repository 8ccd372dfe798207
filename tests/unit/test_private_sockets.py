"""Local sockets (issue 13): a private directory per process, swept after a SIGKILL; an
ipc link that takes only the process it was made for; an introspection client that never
reads cannot end the server."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading

import pynng
import trio

from actors import ActorInfo, IntrospectionServer, fetch_snapshot
from transports import Channel, Codec, SocketDir, unique_address


def test_the_socket_directory_is_private_and_removed() -> None:
    with SocketDir("ifx-test") as path:  # the real base: a socket path has ~100 bytes
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        address = unique_address("ipc", "link", path)
        assert os.path.dirname(address.path) == path
    assert not os.path.exists(path)


def test_a_killed_owners_directory_is_swept_by_the_next(tmp_path) -> None:  # noqa: ANN001
    code = (
        "import sys, time; from transports import SocketDir; "
        f"d = SocketDir('ifx', base={str(tmp_path)!r}); print(d.open(), flush=True); "
        "time.sleep(60)"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    left = owner.stdout.readline().strip()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert os.path.isdir(left)  # SIGKILL: nobody removed it
    with SocketDir("ifx", base=str(tmp_path)) as mine:
        assert not os.path.exists(left) and os.path.isdir(mine)


def test_a_shared_parent_directory_is_refused(tmp_path) -> None:  # noqa: ANN001
    parent = tmp_path / f"ifx-{os.getuid()}"
    parent.mkdir(mode=0o777)
    parent.chmod(0o777)
    try:
        SocketDir("ifx", base=str(tmp_path)).open()
    except PermissionError as exc:
        assert "not a private directory" in str(exc)
    else:
        raise AssertionError("sockets were put in a directory others can enter")


async def test_a_restricted_link_takes_only_the_process_it_names() -> None:
    with SocketDir("ifx-test") as directory:  # short: a socket path has ~100 bytes at most
        address = unique_address("ipc", "link", directory)
        dial = f"import pynng, time; s = pynng.Pair0(dial='{address}'); time.sleep(30)"
        with Channel.listen(address, Codec(bytes), restrict_peers=True) as channel:
            intruder = subprocess.Popen([sys.executable, "-c", dial])
            expected = subprocess.Popen([sys.executable, "-c", dial])
            try:
                channel.accept_only(expected.pid)
                await channel.wait_connected(timeout_s=20)
                with trio.fail_after(20):
                    while channel.refused_peers == 0:
                        await trio.sleep(0.05)
                assert channel.peers == 1  # the one it was made for, never the other
            finally:
                intruder.kill()
                expected.kill()


async def test_an_introspection_client_that_never_reads_cannot_end_the_server() -> None:
    big = ActorInfo(
        name="x" * 100_000, kind="actor", state="running", pid=1, mailbox_depth=0,
        messages_in=0, messages_out=0, last_error="", details={},
    )  # fmt: skip
    address = unique_address("ipc", "introspection")
    server = IntrospectionServer(address, lambda: big)

    done = threading.Event()

    def greedy_client() -> None:
        with pynng.Req0(recv_buffer_size=1) as sock:
            sock.dial(str(address), block=True)
            contexts = [sock.new_context() for _ in range(200)]
            for context in contexts:
                context.send(b"snapshot")  # ...and never read an answer
            done.wait(timeout=30)
            for context in contexts:  # before the socket: a context the GC finds
                context.close()  # after its socket raises "Object closed" in __del__

    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        client = threading.Thread(target=greedy_client)
        client.start()
        try:
            with trio.fail_after(20):
                while server.dropped == 0:
                    await trio.sleep(0.05)
            # still serving everyone else
            info = await trio.to_thread.run_sync(fetch_snapshot, address)
            assert info.name == big.name
        finally:
            done.set()
            await trio.to_thread.run_sync(client.join, 30)
        nursery.cancel_scope.cancel()
