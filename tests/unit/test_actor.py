import pytest
import trio

from actors import (
    ActorRef,
    ActorUnavailable,
    CallTimeout,
    MailboxFull,
    Registry,
    RemoteError,
)
from tests.support_actors import Count, Crash, Echo, EchoActor, Sleep


async def test_call_cast_and_stream() -> None:
    registry = Registry()
    actor = EchoActor("echo", in_registry=registry)
    ref = ActorRef("echo", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert await ref.call(Echo("hi")) == "hi"
        await ref.cast(Echo("fire and forget"))
        async with ref.stream(Count(5)) as items:
            assert [i async for i in items] == [0, 1, 2, 3, 4]
        assert actor.info().messages_in == 3
        actor.request_stop()
    assert actor.state == "stopped"
    assert actor.log == ["start echo", "stop echo"]


async def test_call_timeout_and_unknown_actor() -> None:
    registry = Registry()
    actor = EchoActor("slow", in_registry=registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(CallTimeout, match="'slow' did not answer within 0.1s"):
            await ActorRef("slow", registry).call(Sleep(10), timeout_s=0.1)
        with pytest.raises(ActorUnavailable, match="'nobody'"):
            await ActorRef("nobody", registry).call(Echo("x"))
        nursery.cancel_scope.cancel()


async def test_handler_error_reaches_caller_and_crashes_actor() -> None:
    registry = Registry()
    actor = EchoActor("fragile", in_registry=registry)
    ref = ActorRef("fragile", registry)
    with pytest.raises(BaseExceptionGroup) as group:
        async with trio.open_nursery() as nursery:
            await nursery.start(actor.run)
            await ref.cast(Sleep(0.2))  # keeps the queued call below waiting
            async with trio.open_nursery() as callers:

                async def crash_call() -> None:
                    with pytest.raises(RemoteError, match="RuntimeError: boom"):
                        await ref.call(Crash("boom"))

                async def queued_call() -> None:
                    await trio.sleep(0.05)
                    with pytest.raises(ActorUnavailable, match="stopped before handling"):
                        await ref.call(Echo("after"))

                callers.start_soon(crash_call)
                callers.start_soon(queued_call)
    assert group.group_contains(RuntimeError, match="boom")
    assert actor.state == "crashed"
    assert "boom" in actor.last_error


async def test_full_mailbox_is_a_clear_error() -> None:
    registry = Registry()

    class Tiny(EchoActor):
        mailbox_capacity = 1

    actor = Tiny("tiny", in_registry=registry)
    ref = ActorRef("tiny", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await ref.cast(Sleep(1))
        await trio.sleep(0.01)  # handler takes it, the mailbox is empty again
        await ref.cast(Sleep(1))
        with pytest.raises(MailboxFull, match="stayed full"):
            await ref.cast(Echo("x"), timeout_s=0.1)
        with pytest.raises(MailboxFull):
            ref.cast_nowait(Echo("x"))
        nursery.cancel_scope.cancel()
