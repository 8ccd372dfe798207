"""Running an admitted generation, for every API alike: the gate's admission, the Submit,
the generations started, and the response body streamed or whole."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import trio
from quart import Response

from ..scheduler.messages import Delta
from . import pipeline
from .context import current
from .directory import Lease
from .errors import APIError
from .generation import next_seq_id
from .group import GenerationGroup, StreamBody
from .pipeline import Prepared
from .render import Renderer, stream_events, whole_body
from .served import ServedModel
from .services import IngressState, Services
from .tickets import outcome

log = logging.getLogger("inferflux.ingress")


def timeout_error(timeout_s: float) -> APIError:
    return APIError(
        504,
        f"the request ran past its deadline of {timeout_s:g} s (server.request_timeout_s)",
        type="timeout_error",
        code="timeout",
    )


class Runner:
    def __init__(self, services: Services, state: IngressState) -> None:
        self.services, self.state = services, state

    def _deadline_at(self) -> float:
        timeout = self.services.request_timeout_s
        return current().started + timeout if timeout > 0 else math.inf

    @contextmanager
    def _deadline(self) -> Iterator[None]:
        """Turn the request's deadline passing into its `timeout` error."""
        with trio.move_on_at(self._deadline_at()) as scope:
            yield
        if scope.cancelled_caught:
            raise timeout_error(self.services.request_timeout_s)

    @staticmethod
    async def _until(
        deadline: float, timeout: float, deltas: AsyncIterator[tuple[int, Delta]]
    ) -> AsyncIterator[tuple[int, Delta]]:
        """The deltas, ended by the request's `timeout` error once the deadline passed (the
        body outlives the handler: the deadline is read before)."""
        async with aclosing(deltas):
            while True:
                with trio.move_on_at(deadline) as scope:
                    try:
                        item = await anext(deltas)
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise timeout_error(timeout)
                yield item

    async def serve(
        self,
        requested: str | None,
        keep_alive: Any,
        prepare: Callable[[ServedModel], Awaitable[Prepared]],
        api: str,
        render: Callable[[ServedModel, Prepared], Renderer],
        stream: bool,
    ) -> Response:
        """A generation from start to end: a lease on the model (loading it if it must),
        the pipeline (`prepare`), admission, the generations, the response (`render`).
        The lease is released when the response is done, whichever way it ends."""
        lease = await self.services.models.acquire(requested, keep_alive)
        try:
            prepared = await prepare(lease.model)
            group = await self.generate(lease, prepared, api)
        except BaseException:
            lease.release()
            raise
        return await self.respond(group, render(lease.model, prepared), stream, lease.release)

    async def generate(self, lease: Lease, prepared: Prepared, api: str) -> GenerationGroup:
        """Admit the request, submit it, and wait for each choice's first delta (so that a
        refusal is an HTTP status, not a broken stream)."""
        services, gate, model = self.services, self.services.gate, lease.model
        if self.state.draining:
            raise APIError(
                503,
                "the server is shutting down; retry on another replica",
                type="service_unavailable",
                code="draining",
                retry_after_s=1,
            )
        context = current()
        seq_id = next_seq_id()
        ceiling = await gate.admit(context, model, prepared, seq_id)
        submit = pipeline.submit(prepared, seq_id, context.trace_id, ceiling, context.principal)
        log.info(
            "request %d trace %s (%s): %d prompt tokens",
            seq_id, context.trace_id, api, len(submit.prompt),
        )  # fmt: skip
        group = GenerationGroup(lease.scheduler, submit, prepared.n, self.state.in_flight)
        if services.tracer is not None:
            span = services.tracer.start(
                f"inferflux {api}",
                context.trace_id,
                context.parent_span,
                {
                    "gen_ai.request.model": model.id,
                    "gen_ai.usage.input_tokens": len(submit.prompt),
                    "inferflux.seq_id": seq_id,
                },
            )
            group.trace(span)
            context.span_id = format(span.get_span_context().span_id, "016x")
        try:
            with self._deadline():
                await group.start()
        except BaseException as exc:
            gate.ended(context, *outcome(exc))  # its audit line, its tokens back
            raise
        metrics = services.metrics.for_model(model.id)
        metrics.of_api(api).inc()
        if prepared.images:
            metrics.of(metrics.images).inc(len(prepared.images))
            metrics.of(metrics.image_prepare).observe(prepared.image_s)
        return group

    async def respond(
        self,
        group: GenerationGroup,
        renderer: Renderer,
        stream: bool,
        done: Callable[[], None],
    ) -> Response:
        """The response body; `done` runs once it is over (sent, failed, or abandoned)."""
        context, gate = current(), self.services.gate
        timed = self._until(
            self._deadline_at(),
            self.services.request_timeout_s,
            group.deltas(self.state.nursery),
        )
        deltas = gate.watch(context, group, timed)
        if not stream:
            try:
                body = await whole_body(renderer, deltas, group.close)
            finally:
                done()
            return Response(body, content_type="application/json")

        def finished() -> None:
            gate.ended(context, 499, "client_gone", sum(group.tokens_sent))
            done()

        events = stream_events(renderer, deltas, group.close)
        body = StreamBody(group, events, self.state.nursery, on_close=finished)
        return Response(
            body, content_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
