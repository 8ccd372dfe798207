"""Running an admitted generation, for every API alike: the gate's admission, the Submit,
the generations started, and the response body streamed or whole."""

from __future__ import annotations

import logging

from quart import Response

from . import pipeline
from .context import current
from .errors import APIError
from .generation import next_seq_id
from .group import GenerationGroup, StreamBody
from .pipeline import Prepared
from .render import Renderer, stream_events, whole_body
from .services import IngressState, Services
from .tickets import outcome

log = logging.getLogger("inferflux.ingress")


class Runner:
    def __init__(self, services: Services, state: IngressState) -> None:
        self.services, self.state = services, state

    async def generate(self, prepared: Prepared, api: str) -> GenerationGroup:
        """Admit the request, submit it, and wait for each choice's first delta (so that a
        refusal is an HTTP status, not a broken stream)."""
        services, gate, model = self.services, self.services.gate, self.services.model
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
        submit = pipeline.submit(prepared, seq_id, context.trace_id, ceiling)
        log.info(
            "request %d trace %s (%s): %d prompt tokens",
            seq_id, context.trace_id, api, len(submit.prompt),
        )  # fmt: skip
        group = GenerationGroup(services.scheduler, submit, prepared.n, self.state.in_flight)
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
            await group.start()
        except BaseException as exc:
            gate.ended(context, *outcome(exc))  # its audit line, its tokens back
            raise
        services.metrics.of_api(api).inc()
        return group

    async def respond(self, group: GenerationGroup, renderer: Renderer, stream: bool) -> Response:
        context, gate = current(), self.services.gate
        deltas = gate.watch(context, group, group.deltas(self.state.nursery))
        if not stream:
            body = await whole_body(renderer, deltas, group.close)
            return Response(body, content_type="application/json")
        events = stream_events(renderer, deltas, group.close)
        body = StreamBody(
            group,
            events,
            self.state.nursery,
            on_close=lambda: gate.ended(context, 499, "client_gone", sum(group.tokens_sent)),
        )
        return Response(
            body, content_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
