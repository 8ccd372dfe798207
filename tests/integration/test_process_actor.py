"""Process actors: real child processes, real ipc/tcp sockets, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import trio

from actors import (
    ActorCrashed,
    ActorRef,
    ActorUnavailable,
    ChildSpec,
    IntrospectionServer,
    ProcessActor,
    Registry,
    RemoteError,
    Supervisor,
    fetch_snapshot,
)
from tests.support_actors import Count, Echo, Garbage, Pid, Sleep
from transports import SocketDir, unique_address

TARGET = "tests.support_actors:EchoActor"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


async def wait_until(predicate, timeout_s: float = 20.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


@pytest.mark.parametrize("scheme", ["ipc", "tcp"])
async def test_process_actor_call_stream_and_command_line(scheme: str) -> None:
    registry = Registry()
    actor = ProcessActor("w", TARGET, role="worker", scheme=scheme, in_registry=registry)
    ref = ActorRef("w", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        pid = await ref.call(Pid())
        assert pid == actor.pid != os.getpid()
        assert "inferflux-worker" in cmdline(pid)
        assert await ref.call(Echo("über")) == "über"
        async with ref.stream(Count(100)) as items:
            assert [i async for i in items] == list(range(100))
        actor.request_stop()
    assert not alive(pid)
    assert actor.state == "stopped"


async def test_sigkill_is_detected_and_restarted_and_callers_never_hang() -> None:
    registry = Registry()
    sup = Supervisor(
        "sup",
        [ChildSpec("w", lambda: ProcessActor("w", TARGET, in_registry=registry))],
        max_restarts=5,
        max_seconds=30,
    )
    ref = ActorRef("w", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        first_pid = await ref.call(Pid())
        outcome: list[BaseException] = []

        async def in_flight() -> None:
            try:
                await ref.call(Sleep(30), timeout_s=60)
            except Exception as exc:
                outcome.append(exc)

        nursery.start_soon(in_flight)
        await trio.sleep(0.2)
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: bool(outcome), 10)
        assert isinstance(outcome[0], ActorCrashed)
        assert "SIGKILL" in str(outcome[0])
        # During the restart a call fails fast (or succeeds once the new process is up).
        start = time.monotonic()
        try:
            await ref.call(Pid(), timeout_s=30)
        except ActorUnavailable:
            pass
        assert time.monotonic() - start < 30

        async def restarted() -> int:
            while True:
                try:
                    return await ref.call(Pid())
                except ActorUnavailable:
                    await trio.sleep(0.05)

        with trio.fail_after(30):
            second_pid = await restarted()
        assert second_pid != first_pid and alive(second_pid)
        child = sup.info().children[0]
        assert child.restarts == 1 and "SIGKILL" in child.last_error
        sup.request_stop()
    assert not alive(second_pid)


async def test_stop_escalates_to_sigkill_for_a_child_that_ignores_sigterm() -> None:
    registry = Registry()
    actor = ProcessActor(
        "w", TARGET, {"ignore_sigterm": True}, term_timeout_s=0.5, in_registry=registry
    )
    ref = ActorRef("w", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        pid = await ref.call(Pid())
        await ref.cast(Sleep(60))  # graceful stop would wait for this
        await trio.sleep(0.1)
        start = time.monotonic()
        actor.request_stop()
    assert time.monotonic() - start < 5  # 0.5 s graceful + 0.5 s SIGTERM, then SIGKILL
    assert not alive(pid)


def test_child_exits_when_parent_is_killed(tmp_path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys, trio
        sys.path.insert(0, {os.getcwd()!r})
        from actors import ProcessActor, ActorRef
        from tests.support_actors import Pid

        async def main():
            actor = ProcessActor("w", {TARGET!r})
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run)
                print(await ActorRef("w").call(Pid()), flush=True)
                await trio.sleep_forever()
        trio.run(main)
    """)
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        child_pid = int(parent.stdout.readline())
        assert alive(child_pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child_pid), "child outlived its parent"
    finally:
        parent.kill()


async def test_introspection_snapshot_over_a_socket() -> None:
    registry = Registry()
    sup = Supervisor(
        "root", [ChildSpec("w", lambda: ProcessActor("w", TARGET, in_registry=registry))]
    )
    server = IntrospectionServer(unique_address("ipc", "introspect"), sup.info)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await nursery.start(server.run)
        await ActorRef("w", registry).call(Echo("x"))
        snapshot = await trio.to_thread.run_sync(fetch_snapshot, server.address)
        assert snapshot.name == "root" and snapshot.kind == "supervisor"
        (worker,) = snapshot.children
        assert worker.kind == "process" and worker.state == "running" and worker.pid > 0
        assert worker.messages_in == 1 and worker.messages_out == 1
        sup.request_stop()
        nursery.cancel_scope.cancel()


async def test_bad_replies_are_dropped_and_counted_not_a_restart() -> None:
    registry = Registry()
    actor = ProcessActor("w", TARGET, role="worker", in_registry=registry)
    ref = ActorRef("w", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        pid = actor.pid
        async with ref.stream(Garbage()) as items:
            assert [item async for item in items] == [1, 2]  # 1.5 dropped
        with pytest.raises(RemoteError) as bad:
            await ref.call(Garbage(bad_end=True))  # its caller is answered, not left waiting
        assert bad.value.kind == "BadReply"
        assert actor.bad_replies == 2 and actor.info().details["bad_replies"] == 2
        assert actor.pid == pid and await ref.call(Echo("still here")) == "still here"
        actor.request_stop()


async def test_the_link_socket_is_private_and_takes_only_its_child() -> None:
    registry = Registry()
    with SocketDir("ifx-test") as directory:
        actor = ProcessActor("w", TARGET, socket_dir=directory, in_registry=registry)
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            (path,) = os.listdir(directory)
            address = f"ipc://{directory}/{path}"
            assert address in cmdline(actor.pid)
            dial = f"import pynng, time; s = pynng.Pair0(dial='{address}'); time.sleep(30)"
            intruder = subprocess.Popen([sys.executable, "-c", dial])
            try:
                channel = actor._channel
                assert channel is not None
                await wait_until(lambda: channel.refused_peers > 0)
                assert await ActorRef("w", registry).call(Echo("mine")) == "mine"
            finally:
                intruder.kill()
            actor.request_stop()


async def test_a_child_reaches_its_parents_actors_by_name_in_their_protocol() -> None:
    """Imports: calls, streams and refusals from the child to an actor of the parent's
    registry; casts arrive in order; a name not imported is not reachable; the child's
    details reach the parent's introspection."""
    from tests.support_actors import Recorder, Relay, RelayGarbage, Tell

    registry = Registry()
    recorder = Recorder("rec", in_registry=registry)
    actor = ProcessActor(
        "relay",
        "tests.support_actors:RelayActor",
        imports={"rec": "tests.support_actors:Recorder"},
        role="relay",
        in_registry=registry,
    )
    ref = ActorRef("relay", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        await nursery.start(actor.run)
        assert "inferflux-relay" in cmdline(actor.pid)
        assert await ref.call(Relay("rec", "hi", 3)) == "hi [0, 1, 2] Nope(no)"
        assert await ref.call(Tell("rec", "m", 200)) == "told"
        await wait_until(lambda: len(recorder.seen) == 201, 10)
        assert recorder.seen[1:] == [f"m{i}" for i in range(200)]
        # A reply the child cannot decode fails that ask alone; the child lives on.
        answer = await ref.call(RelayGarbage("rec"))
        assert answer.startswith("RemoteError") and "BadReply" in answer, answer
        assert await ref.call(Relay("rec", "again", 1)) == "again [0] Nope(no)"
        # Not imported: unreachable, however it is asked.
        answer = await ref.call(Relay("elsewhere", "x", 1))
        assert answer.startswith("ActorUnavailable")
        await wait_until(lambda: "in_flight" in actor.info().details, 5)
        actor.request_stop()
        recorder.request_stop()
