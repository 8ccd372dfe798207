"""The OpenAI-compatible HTTP surface (quart-trio), served by hypercorn in the ingress actor.

Routes only. A generation request reads, top to bottom:

    parse      read_json: the body as a request Struct (400 naming the field)
    pipeline   prepare_*: checks, tools and response_format, prompt tokens (pipeline.py)
    gate       admit: policy, ceilings, audit ticket (gate.py; access was checked before
               the body was read)
    generate   the Submit, its n generations started (group.py)
    render     the chat or completion renderer, streamed or whole (render.py)
"""

from __future__ import annotations

import logging
import secrets

import msgspec
from quart import Response, g, request
from quart_trio import QuartTrio

from . import pipeline
from .chat_render import ChatRenderer
from .completion_render import CompletionRenderer
from .context import RequestContext, current, trace_from
from .errors import APIError
from .generation import next_seq_id
from .group import GenerationGroup, StreamBody
from .health import health_blueprint
from .http import install_error_handlers, json_response, read_json
from .pipeline import Prepared
from .render import Renderer, stream_events, whole_body
from .request_types import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerationRequest,
    TokenizeRequest,
)
from .services import IngressState, Services
from .tickets import outcome

log = logging.getLogger("inferflux.ingress")

CHAT = msgspec.json.Decoder(ChatCompletionRequest)
COMPLETION = msgspec.json.Decoder(CompletionRequest)
TOKENIZE = msgspec.json.Decoder(TokenizeRequest)
DETOKENIZE = msgspec.json.Decoder(DetokenizeRequest)


def create_app(services: Services, state: IngressState) -> QuartTrio:
    app = QuartTrio("inferflux")
    app.config["MAX_CONTENT_LENGTH"] = services.max_body_bytes
    # Quart cuts responses after 60 s by default; a long generation is legitimate, and the
    # scheduler ends every request (finish, client gone, or error).
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True
    install_error_handlers(app, services.max_body_bytes)
    app.register_blueprint(health_blueprint(services, state))
    for blueprint in services.gate.blueprints():
        app.register_blueprint(blueprint)
    model, gate = services.model, services.gate

    @app.before_request
    async def open_context() -> None:
        trace_id, parent_span = trace_from(request.headers.get("traceparent", ""))
        g.context = RequestContext(
            method=request.method,
            path=request.path,
            credential=request.headers.get("authorization", ""),
            trace_id=trace_id,
            parent_span=parent_span,
        )
        await gate.check_access(g.context)

    @app.after_request
    async def close_context(response: Response) -> Response:
        context: RequestContext | None = g.get("context")
        trace = context.trace_id if context else secrets.token_hex(16)
        span = (context.span_id if context else "") or secrets.token_hex(8)
        response.headers["traceparent"] = f"00-{trace}-{span}-01"
        if context is not None:
            gate.audit(context, response.status_code)
        return response

    @app.get("/v1/models")
    async def models() -> Response:
        listed = {"id": model.id, "object": "model", "created": 0, "owned_by": "inferflux"}
        return json_response({"object": "list", "data": [listed]})

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        chat = await read_json(CHAT, services.max_body_bytes)
        prepared = await pipeline.prepare_chat(model, chat)
        group = await generate(prepared, "chat")
        renderer = ChatRenderer(
            model.id, chat.n, len(prepared.prompt), model.tokenizer.piece,
            prepared.tools, prepared.want_logprobs,
        )  # fmt: skip
        return await respond(group, renderer, chat)

    @app.post("/v1/completions")
    async def completions() -> Response:
        completion = await read_json(COMPLETION, services.max_body_bytes)
        prepared = pipeline.prepare_completion(model, completion)
        group = await generate(prepared, "completion")
        renderer = CompletionRenderer(
            model.id, completion.n, len(prepared.prompt), model.tokenizer.piece,
            prepared.echo, prepared.want_logprobs,
        )  # fmt: skip
        return await respond(group, renderer, completion)

    @app.post("/tokenize")
    async def tokenize() -> Response:
        tokens = pipeline.tokenize(model, await read_json(TOKENIZE, services.max_body_bytes))
        return json_response(
            {"tokens": tokens, "count": len(tokens), "max_model_len": model.ctx_size}
        )

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = await read_json(DETOKENIZE, services.max_body_bytes)
        return json_response({"prompt": pipeline.detokenize(model, body)})

    async def generate(prepared: Prepared, kind: str) -> GenerationGroup:
        """Admit the request, submit it, and wait for each choice's first delta (so that a
        refusal is an HTTP status, not a broken stream)."""
        if state.draining:
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
            "request %d trace %s: %d prompt tokens", seq_id, context.trace_id, len(submit.prompt)
        )
        group = GenerationGroup(services.scheduler, submit, prepared.n, state.in_flight)
        if services.tracer is not None:
            span = services.tracer.start(
                f"inferflux {kind}",
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
        return group

    async def respond(
        group: GenerationGroup, renderer: Renderer, req: GenerationRequest
    ) -> Response:
        context = current()
        deltas = gate.watch(context, group, group.deltas(state.nursery))
        if not req.stream:
            return Response(
                await whole_body(renderer, deltas, group.close), content_type="application/json"
            )
        events = stream_events(renderer, deltas, req.include_usage, group.close)
        body = StreamBody(
            group,
            events,
            state.nursery,
            on_close=lambda: gate.ended(context, 499, "client_gone", sum(group.tokens_sent)),
        )
        return Response(
            body, content_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    return app
