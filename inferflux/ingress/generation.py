"""Turning a validated OpenAI request into a scheduler stream, and its deltas into OpenAI
responses (one JSON body, or server-sent events)."""

from __future__ import annotations

import contextlib
import itertools
import random
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator

import msgspec
import trio

from actors import ActorCrashed, ActorError, ActorRef

from ..scheduler.messages import Abort, Delta, GenerationFailed, NotReady, Overloaded, Submit
from .errors import APIError

_seq_ids = itertools.count(1)
RESUBMIT_WINDOW_S = 10.0  # how long a stream waits for a restarted scheduler
_json = msgspec.json.Encoder()


def next_seq_id() -> int:
    return next(_seq_ids)


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class InFlight:
    """Generations under way, so a drain can wait for them and not for idle connections."""

    def __init__(self) -> None:
        self.count = 0

    async def wait_zero(self, timeout_s: float) -> bool:
        with trio.move_on_after(timeout_s):
            while self.count > 0:
                await trio.sleep(0.05)
        return self.count == 0


class Generation:
    """One request's stream of Deltas from the scheduler.

    `start()` waits for the first delta, so admission errors (overload, no worker) become a
    proper HTTP status before any response byte is sent. `close()` (always called) tells
    the scheduler to stop if the client left before the end.
    """

    def __init__(self, scheduler: ActorRef, submit: Submit, in_flight: InFlight) -> None:
        self.scheduler = scheduler
        sampling = submit.sampling
        if sampling.seed is None and sampling.temperature > 0:
            # A seed of our own makes an unseeded sampled stream resumable after any crash
            # (the worker restores the RNG from it), exactly like a seeded one.
            sampling = msgspec.structs.replace(sampling, seed=random.getrandbits(32))
            submit = msgspec.structs.replace(submit, sampling=sampling)
        self.submit = submit
        self.tokens: list[int] = []  # what the client has been sent, for a resubmission
        self.text_sent = 0
        self.finish_reason = ""
        self.span: Any = None  # an OpenTelemetry span, ended with the generation
        self.in_flight = in_flight
        self._counted = False
        self._stack = AsyncExitStack()
        self._items: AsyncIterator[Delta] | None = None
        self.first: Delta | None = None
        self.finished = False

    async def start(self) -> None:
        self.in_flight.count += 1
        self._counted = True
        try:
            self._items = await self._stack.enter_async_context(
                self.scheduler.stream(self.submit, first_timeout_s=5.0)
            )
            while True:
                try:
                    self.first = await anext(self._items)
                    break
                except ActorError as exc:  # the scheduler died holding the request
                    await self._resubmit(exc)
        except StopAsyncIteration:
            self.first = None
        except Exception as exc:
            await self.close()
            raise _api_error(exc) from exc
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.close()
            raise

    async def deltas(self) -> AsyncIterator[Delta]:
        assert self._items is not None
        if self.first is not None:
            self._sent(self.first)
            yield self.first
            if self.first.finish_reason:
                self.finished = True
                return
        while True:
            try:
                async for delta in self._items:
                    self._sent(delta)
                    yield delta
                    if delta.finish_reason:
                        self.finished = True
                        return
                raise ActorCrashed(self.scheduler.name, "stream ended without a finish")
            except ActorError as exc:
                # The scheduler died with our request: it is restarted by its supervisor,
                # and we resume from what the client already has (recompute).
                await self._resubmit(exc)
            except Exception as exc:
                raise _api_error(exc) from None

    def _sent(self, delta: Delta) -> None:
        self.tokens.extend(delta.token_ids)
        self.text_sent += len(delta.text)
        self.finish_reason = delta.finish_reason or self.finish_reason

    async def _resubmit(self, cause: ActorError) -> None:
        resumed = msgspec.structs.replace(
            self.submit, generated=list(self.tokens), text_sent=self.text_sent
        )
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        deadline = trio.current_time() + RESUBMIT_WINDOW_S
        while True:
            try:
                self._items = await self._stack.enter_async_context(
                    self.scheduler.stream(resumed, first_timeout_s=5.0)
                )
                return
            except ActorError as exc:
                if trio.current_time() > deadline:
                    raise _api_error(exc) from cause
                await trio.sleep(0.1)

    async def close(self) -> None:
        if self._counted:
            self._counted = False
            self.in_flight.count -= 1
        if not self.finished:
            try:
                self.scheduler.cast_nowait(Abort(self.submit.seq_id, self.submit.trace_id))
            except ActorError:
                pass
        if self.span is not None:
            self.span.set_attribute("gen_ai.usage.output_tokens", len(self.tokens))
            self.span.set_attribute("inferflux.finish_reason", self.finish_reason or "aborted")
            self.span.end()
            self.span = None
        await self._stack.aclose()


def sibling(submit: Submit, index: int) -> Submit:
    """Choice `index` of an n > 1 request: its own sequence, and its own seed (the same seed
    would make every choice identical)."""
    sampling = submit.sampling
    if sampling.seed is not None:
        sampling = msgspec.structs.replace(sampling, seed=(sampling.seed + index) & 0xFFFFFFFF)
    return msgspec.structs.replace(submit, seq_id=next_seq_id(), sampling=sampling)


async def start_all(generations: list[Generation]) -> None:
    """Start generations concurrently; the first failure is raised (each failed one has
    closed itself; the caller closes the rest)."""
    errors: list[Exception] = []

    async def start(generation: Generation) -> None:
        try:
            await generation.start()
        except Exception as exc:  # an APIError: kept for the caller, not a nursery group
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for generation in generations:
            nursery.start_soon(start, generation)
    if errors:
        raise errors[0]


async def merged(
    generations: list[Generation], nursery: trio.Nursery | None
) -> AsyncIterator[tuple[int, Delta]]:
    """(choice index, delta) from every generation, in arrival order.

    With several choices, one pump task per generation runs in `nursery` (the ingress
    actor's: a response body is an async generator, which must not hold a nursery open
    across its yields). The pumps are cancelled when this iterator ends or is closed."""
    if len(generations) == 1:
        async for delta in generations[0].deltas():
            yield 0, delta
        return
    assert nursery is not None, "n > 1 needs the ingress nursery"
    send, receive = trio.open_memory_channel[tuple[int, Delta | BaseException]](64)
    scopes = [trio.CancelScope() for _ in generations]

    async def pump(index: int) -> None:
        # Never raises: an exception here would take the ingress actor down with it.
        with scopes[index], contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            try:
                async for delta in generations[index].deltas():
                    await send.send((index, delta))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception as exc:  # an APIError: handed to the response
                await send.send((index, exc))

    try:
        for index in range(len(generations)):
            nursery.start_soon(pump, index)
        finished = 0
        while finished < len(generations):
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


def total_usage(prompt_tokens: int, choices: list[Any]) -> dict[str, Any]:
    """Usage of all choices: the prompt counts once (its KV cells are shared)."""
    ends = [choice.delta for choice in choices if choice.delta is not None]
    completion = sum(delta.completion_tokens for delta in ends)
    cached = ends[0].cached_tokens if ends else 0
    return usage(prompt_tokens, completion, cached)


def _api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, Overloaded):
        return APIError(
            429,
            str(exc),
            type="rate_limit_error",
            code="overloaded",
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(exc, GenerationFailed):
        # Only a grammar ends a sequence this way, and only a schema beyond the constraint
        # engine's limits gets past the ingress's check: the client can simplify it.
        return APIError(400, str(exc), code="generation_failed")
    if isinstance(exc, NotReady):
        return APIError(
            503, str(exc), type="service_unavailable", code="not_ready", retry_after_s=2
        )
    if isinstance(exc, ActorError):
        return APIError(
            503,
            f"inference backend unavailable: {exc}",
            type="service_unavailable",
            code="backend_unavailable",
            retry_after_s=2,
        )
    return exc


def sse(payload: Any) -> bytes:
    return b"data: " + _json.encode(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def now() -> int:
    return int(time.time())
