"""The generations of one request (`n` choices) and the lifetime of their response body.

`GenerationGroup` starts, reads and closes a request's generations together: closing is
the one place a generation's stream is shut (shielded: it runs while the request is being
cancelled, and it tells the scheduler to stop). `StreamBody` makes sure a streamed body
closes its group even when quart never iterates it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import msgspec
import trio

from actors import ActorRef

from ..scheduler.messages import Delta, Submit
from .generation import Generation, InFlight, next_seq_id

STREAM_START_S = 10.0  # a streamed body not started by then will never be (client gone)


def sibling(submit: Submit, index: int) -> Submit:
    """Choice `index` of an n > 1 request: its own sequence, and its own seed (the same seed
    would make every choice identical)."""
    sampling = submit.sampling
    if sampling.seed is not None:
        sampling = msgspec.structs.replace(sampling, seed=(sampling.seed + index) & 0xFFFFFFFF)
    return msgspec.structs.replace(submit, seq_id=next_seq_id(), sampling=sampling)


class GenerationGroup:
    def __init__(self, scheduler: ActorRef, submit: Submit, n: int, in_flight: InFlight) -> None:
        self.generations = [Generation(scheduler, submit, in_flight)] + [
            Generation(scheduler, sibling(submit, i), in_flight) for i in range(1, n)
        ]

    @property
    def seq_id(self) -> int:
        """The request's sequence id (its first choice's): what the gate knows it by."""
        return self.generations[0].submit.seq_id

    @property
    def prompt_tokens(self) -> int:
        return len(self.generations[0].submit.prompt)

    @property
    def tokens_sent(self) -> list[int]:
        """Tokens sent so far, per choice."""
        return [len(generation.tokens) for generation in self.generations]

    def trace(self, span: Any) -> None:
        """An OpenTelemetry span, ended with the first choice."""
        self.generations[0].span = span

    async def start(self) -> None:
        """Start every choice: the first alone (once its first token is out, its prompt is
        resident), then the others together (they copy those KV cells). On failure the
        group is closed and the first error raised."""
        try:
            await self.generations[0].start()
            errors: list[Exception] = []

            async def start(generation: Generation) -> None:
                try:
                    await generation.start()
                except Exception as exc:  # an APIError: raised below, not as a group
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for generation in self.generations[1:]:
                    nursery.start_soon(start, generation)
            if errors:
                raise errors[0]
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop every choice that has not finished (safe to call again)."""
        with trio.CancelScope(shield=True):
            for generation in self.generations:
                await generation.close()

    async def deltas(self, nursery: trio.Nursery) -> AsyncIterator[tuple[int, Delta]]:
        """(choice index, delta) from every choice, in arrival order.

        With several choices, one pump task per choice runs in `nursery` (the ingress
        actor's: a response body is an async generator, which must not hold a nursery open
        across its yields). The pumps are cancelled when this iterator ends or is closed."""
        if len(self.generations) == 1:
            async for delta in self.generations[0].deltas():
                yield 0, delta
            return
        send, receive = trio.open_memory_channel[tuple[int, Delta | BaseException]](64)
        scopes = [trio.CancelScope() for _ in self.generations]

        async def pump(index: int) -> None:
            # Never raises: an exception here would take the ingress actor down with it.
            with (
                scopes[index],
                contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                try:
                    async for delta in self.generations[index].deltas():
                        await send.send((index, delta))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    raise
                except Exception as exc:  # an APIError: handed to the response
                    await send.send((index, exc))

        try:
            for index in range(len(self.generations)):
                nursery.start_soon(pump, index)
            finished = 0
            while finished < len(self.generations):
                index, item = await receive.receive()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason:
                    finished += 1
                yield index, item
        finally:
            for scope in scopes:
                scope.cancel()
            receive.close()


class StreamBody:
    """A streamed response body whose group is closed even when it is never iterated: a
    client that leaves between the handler's return and the first body byte cancels the
    request before quart enters the body, and an async generator that never started
    never runs its `finally`. Quart closes a body it did enter (`aclose`); one it never
    entered is closed after STREAM_START_S. `on_close` runs once, after the group closed."""

    def __init__(
        self,
        group: GenerationGroup,
        body: AsyncGenerator[bytes, None],
        nursery: trio.Nursery,
        on_close: Callable[[], None],
        start_within_s: float = STREAM_START_S,
    ) -> None:
        self._group, self._body, self._on_close = group, body, on_close
        self._started = self._done = False
        self._watchdog = trio.CancelScope()
        nursery.start_soon(self._close_unstarted, start_within_s)

    def __aiter__(self) -> StreamBody:
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        self._watchdog.cancel()  # quart closes a body it started
        if self._done:
            raise StopAsyncIteration
        return await self._body.__anext__()

    async def aclose(self) -> None:
        try:
            await self._body.aclose()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._watchdog.cancel()
        await self._group.close()  # a no-op when the body's own close ran
        self._on_close()

    async def _close_unstarted(self, after_s: float) -> None:
        with self._watchdog:
            await trio.sleep(after_s)
            await self._finish()
