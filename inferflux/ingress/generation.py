"""One generation: a Submit's stream of Deltas from the scheduler, resumed across a
scheduler crash, and the HTTP error its failure means."""

from __future__ import annotations

import itertools
import random
from contextlib import AsyncExitStack
from typing import Any, AsyncIterator

import msgspec
import trio

from actors import ActorCrashed, ActorError, ActorRef, Rejected

from ..scheduler.messages import Abort, Delta, GenerationFailed, NotReady, Overloaded, Submit
from .errors import APIError

_seq_ids = itertools.count(1)
RESUBMIT_WINDOW_S = 10.0  # how long a stream waits for a restarted scheduler


def next_seq_id() -> int:
    return next(_seq_ids)


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
        self._closed = False

    async def start(self) -> None:
        self.in_flight.count += 1
        self._counted = True
        try:
            # A scheduler restarting right now (it crashed) is waited for, as below.
            await self._open(self.submit, None)
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
        await self._open(resumed, cause)

    async def _open(self, submit: Submit, cause: ActorError | None) -> None:
        """Open the scheduler's stream, waiting up to RESUBMIT_WINDOW_S for a scheduler
        that is restarting (not running: ActorUnavailable). Its refusals (Rejected) are
        answers, not outages: they go to the client at once."""
        deadline = trio.current_time() + RESUBMIT_WINDOW_S
        while True:
            try:
                self._items = await self._stack.enter_async_context(
                    self.scheduler.stream(submit, first_timeout_s=5.0)
                )
                return
            except ActorError as exc:
                if trio.current_time() > deadline:
                    raise _api_error(exc) from cause
                await trio.sleep(0.1)

    async def close(self) -> None:
        """Stop the stream (telling the scheduler, if it has not finished); once."""
        if self._closed:
            return
        self._closed = True
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


def _api_error(exc: BaseException) -> BaseException:
    if isinstance(exc, Rejected):
        match exc.error:
            case Overloaded(message, retry_after_s):
                return APIError(
                    429,
                    message,
                    type="rate_limit_error",
                    code="overloaded",
                    retry_after_s=retry_after_s,
                )
            case GenerationFailed(message):
                # A grammar beyond the constraint engine's limits that got past the
                # ingress's check, or a request that crashes the worker: the client's to fix.
                return APIError(400, message, code="generation_failed")
            case NotReady(message):
                return APIError(
                    503, message, type="service_unavailable", code="not_ready", retry_after_s=2
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
