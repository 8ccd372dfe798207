"""Chaos commands over a real introspection socket: refused unless enabled; `crash`
crashes the named actor from inside, in its child process for a process actor (its
supervisor restarts it); `faults` sets and clears
a fault plan on a process actor's link; bad commands answer an error, never crash."""

import trio

from actors import (
    ActorRef,
    ChildSpec,
    IntrospectionServer,
    ProcessActor,
    Registry,
    Supervisor,
    chaos_control,
    send_command,
)
from tests.support_actors import Echo, EchoActor
from transports import unique_address


def tree(registry: Registry, log: list[str]) -> Supervisor:
    return Supervisor(
        "root",
        [
            ChildSpec("echo", lambda: EchoActor("echo", log=log, in_registry=registry)),
            ChildSpec(
                "proc",
                lambda: ProcessActor(
                    "proc", "tests.support_actors:EchoActor", role="test", in_registry=registry
                ),
            ),
        ],
    )


async def ask(address: object, command: object) -> dict:
    return await trio.to_thread.run_sync(send_command, address, command)


async def test_chaos_commands() -> None:
    registry, log = Registry(), []
    root = tree(registry, log)
    off = IntrospectionServer(unique_address("ipc"), root.info)
    on = IntrospectionServer(unique_address("ipc"), root.info, chaos_control(root))
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await nursery.start(off.run)
        await nursery.start(on.run)
        refused = await ask(off.address, {"op": "crash", "actor": "echo"})
        assert "chaos commands are off" in refused["error"]

        assert await ask(on.address, {"op": "crash", "actor": "echo"}) == {"ok": True}
        with trio.fail_after(5):
            while log.count("start echo") < 2:
                await trio.sleep(0.02)
        assert root.info().children[0].restarts == 1
        assert "InjectedCrash" in root.info().children[0].last_error
        assert await ActorRef("echo", registry).call(Echo("back"), timeout_s=5) == "back"

        # A process actor: the exception is raised in its child process, which exits; the
        # supervisor starts a new one.
        first_pid = root.find("proc").pid
        assert await ask(on.address, {"op": "crash", "actor": "proc"}) == {"ok": True}
        with trio.fail_after(10):
            while (proc := root.find("proc")) is None or proc.pid in (0, first_pid):
                await trio.sleep(0.05)
            while proc.state != "running":
                await trio.sleep(0.05)
        assert "exited unexpectedly (exit code 1)" in root.info().children[1].last_error
        assert isinstance(proc, ProcessActor)
        plan = {"duplicate": 1.0, "seed": 2}
        assert await ask(on.address, {"op": "faults", "actor": "proc", "faults": plan}) == {
            "ok": True
        }
        assert proc._channel is not None and proc._channel.faults is not None
        # Every frame doubled both ways: answers still arrive exactly once.
        for i in range(5):
            assert await ActorRef("proc", registry).call(Echo(str(i)), timeout_s=10) == str(i)
        assert await ask(on.address, {"op": "faults", "actor": "proc", "faults": {}}) == {
            "ok": True
        }
        assert proc._channel.faults is None

        for bad, says in [
            ({"op": "crash", "actor": "nobody"}, "no running actor"),
            ({"op": "explode", "actor": "echo"}, "unknown op"),
            ({"op": "faults", "actor": "echo", "faults": {}}, "not a process actor"),
            ({"op": "faults", "actor": "proc", "faults": {"drop": 7}}, "probability"),
        ]:
            assert says in (await ask(on.address, bad))["error"]
        assert root.find("echo") is not None  # still serving
        nursery.cancel_scope.cancel()
