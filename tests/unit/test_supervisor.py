"""OTP semantics of Supervisor, with real actors."""

import pytest
import trio

from actors import (
    ActorRef,
    ActorUnavailable,
    ChildSpec,
    Registry,
    RemoteError,
    RestartIntensityExceeded,
    Supervisor,
)
from tests.support_actors import Crash, Echo, EchoActor, Sleep


def specs(registry: Registry, log: list[str], names: list[str], **kw: object) -> list[ChildSpec]:
    return [
        ChildSpec(name, lambda name=name: EchoActor(name, log=log, in_registry=registry), **kw)
        for name in names
    ]


async def crash(registry: Registry, name: str) -> None:
    with pytest.raises((RemoteError, ActorUnavailable)):
        await ActorRef(name, registry).call(Crash())


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


def starts(log: list[str], name: str) -> int:
    return log.count(f"start {name}")


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [
        ("one_for_one", {"b"}),
        ("one_for_all", {"a", "b", "c"}),
        ("rest_for_one", {"b", "c"}),
    ],
)
async def test_strategies_restart_the_right_children(strategy: str, restarted: set[str]) -> None:
    registry, log = Registry(), []
    sup = Supervisor("sup", specs(registry, log, ["a", "b", "c"]), strategy=strategy)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert log == ["start a", "start b", "start c"]  # ordered start
        await crash(registry, "b")
        await wait_until(lambda: starts(log, "b") == 2)
        await trio.sleep(0.05)
        assert {n for n in "abc" if starts(log, n) == 2} == restarted
        assert await ActorRef("b", registry).call(Echo("back")) == "back"
        if strategy != "one_for_one":  # restarted siblings stopped in reverse order first
            stops = [line for line in log if line.startswith("stop")]
            assert stops[0] == "stop b" and stops[1:] == [
                f"stop {n}" for n in reversed(sorted(restarted - {"b"}))
            ]
        sup.request_stop()
    assert sup.state == "stopped"


async def test_restart_types() -> None:
    registry, log = Registry(), []

    def child(name: str, restart: str, exit_after_start: bool = False) -> ChildSpec:
        return ChildSpec(
            name,
            lambda: EchoActor(
                name, log=log, in_registry=registry, exit_after_start=exit_after_start
            ),
            restart=restart,
        )

    sup = Supervisor(
        "sup",
        [
            child("perm", "permanent"),
            child("trans", "transient"),
            child("temp", "temporary"),
            child("trans_normal", "transient", exit_after_start=True),
        ],
        max_restarts=10,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await crash(registry, "perm")
        await crash(registry, "trans")
        await crash(registry, "temp")
        await wait_until(lambda: starts(log, "perm") == 2 and starts(log, "trans") == 2)
        await trio.sleep(0.1)
        assert starts(log, "temp") == 1  # temporary: never restarted
        assert starts(log, "trans_normal") == 1  # transient + normal exit: not restarted
        info = {c.name: c for c in sup.info().children}
        assert info["perm"].restarts == 1 and info["perm"].state == "running"
        assert info["temp"].state == "crashed" and "asked to crash" in info["temp"].last_error
        sup.request_stop()


async def test_permanent_child_restarted_after_normal_exit() -> None:
    registry, log = Registry(), []
    made = []

    def make() -> EchoActor:
        actor = EchoActor("p", log=log, in_registry=registry, exit_after_start=not made)
        made.append(actor)
        return actor

    sup = Supervisor("sup", [ChildSpec("p", make)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await wait_until(lambda: starts(log, "p") == 2)
        sup.request_stop()


async def test_intensity_exceeded_escalates_to_parent() -> None:
    registry, log = Registry(), []
    inner_starts = []

    def make_inner() -> Supervisor:
        inner_starts.append(1)
        return Supervisor("inner", specs(registry, log, ["w"]), max_restarts=2, max_seconds=10)

    top = Supervisor("top", [ChildSpec("inner", make_inner)], max_restarts=1, max_seconds=10)
    with pytest.raises(BaseExceptionGroup) as group:
        async with trio.open_nursery() as nursery:
            await nursery.start(top.run)
            for crashes in range(1, 7):
                # w starts once per crash (restarts inside inner, or inner restarted by top)
                await wait_until(lambda n=crashes: starts(log, "w") == n)
                await crash(registry, "w")
                if crashes == 3:  # inner exceeded 2 restarts: top restarted inner
                    await wait_until(lambda: len(inner_starts) == 2)
            await trio.sleep(5)
    assert group.group_contains(RestartIntensityExceeded, match="supervisor 'top'")
    assert top.state == "crashed"


async def test_stop_in_reverse_order_with_shutdown_timeout() -> None:
    registry, log = Registry(), []
    sup = Supervisor(
        "sup",
        [
            ChildSpec("first", lambda: EchoActor("first", log=log, in_registry=registry)),
            ChildSpec(
                "stubborn",
                lambda: EchoActor("stubborn", log=log, in_registry=registry),
                shutdown_timeout_s=0.3,
            ),
            ChildSpec("last", lambda: EchoActor("last", log=log, in_registry=registry)),
        ],
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await ActorRef("stubborn", registry).cast(Sleep(10))  # graceful stop would wait 10 s
        await trio.sleep(0.05)
        start = trio.current_time()
        sup.request_stop()
    elapsed = trio.current_time() - start
    assert [line for line in log if line.startswith("stop")] == [
        "stop last",
        "stop stubborn",
        "stop first",
    ]
    # the stubborn child was cancelled at its 0.3 s shutdown timeout
    assert 0.3 <= elapsed < 2
    assert sup.state == "stopped"


async def test_children_added_and_removed_while_running() -> None:
    """OTP's start_child / terminate_child: a dynamic child is supervised like any other
    (restarted after a crash), and a stopped one is gone for good."""
    registry = Registry()
    log: list[str] = []
    root = Supervisor("root", [], max_restarts=5, max_seconds=10)
    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        spec = ChildSpec("late", lambda: EchoActor("late", log=log, in_registry=registry))
        await root.start_child(spec)
        ref = ActorRef("late", registry)
        assert await ref.call(Echo("hi")) == "hi"
        with pytest.raises(ValueError, match="already has"):
            await root.start_child(spec)
        with pytest.raises(RemoteError):
            await ref.call(Crash())
        with trio.fail_after(5):
            while log.count("start late") < 2:
                await trio.sleep(0.01)
        assert await ref.call(Echo("again")) == "again"  # restarted by its supervisor
        await root.stop_child("late")
        assert log[-1] == "stop late" and [c.name for c in root.info().children] == []
        with pytest.raises(ActorUnavailable):
            await ref.call(Echo("gone"))
        root.request_stop()
