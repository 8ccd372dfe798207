"""The OpenAI-compatible HTTP surface (quart-trio), served by hypercorn in the ingress actor.

Routes only. A generation request reads, top to bottom:

    parse      read_json: the body as a request Struct (400 naming the field)
    pipeline   prepare_*: checks, tools and response_format, prompt tokens (pipeline.py)
    gate       admit: policy, ceilings, audit ticket (gate.py; access was checked before
               the body was read)
    generate   the Submit, its n generations started (group.py)
    render     the chat or completion renderer, streamed or whole (render.py)

`runner.py` does the last three for every API alike; the Responses and Anthropic Messages
APIs are blueprints of their own with the same shape.
"""

from __future__ import annotations

import logging
import secrets
from functools import partial

import msgspec
from quart import Response, g, request
from quart_trio import QuartTrio

from . import pipeline
from .chat_render import ChatRenderer
from .completion_render import CompletionRenderer
from .context import RequestContext, credential, trace_from
from .embeddings import embeddings
from .errors import APIError
from .health import health_blueprint
from .http import install_error_handlers, json_response, read_json, require_json_body
from .messages_api import messages_blueprint
from .pipeline import Prepared
from .render import Renderer
from .request_types import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from .responses_api import responses_blueprint
from .runner import Runner
from .served import ServedModel
from .services import IngressState, Services

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
    if not services.openai_api:  # a prefill node: /livez, /readyz, /metrics
        return app
    for blueprint in services.gate.blueprints(services.models, state.nursery):
        app.register_blueprint(blueprint)
    gate = services.gate
    runner = Runner(services, state)
    app.register_blueprint(responses_blueprint(services, runner, services.responses))
    app.register_blueprint(messages_blueprint(services, runner))

    @app.before_request
    async def open_context() -> None:
        try:
            services.browser.check(request.headers)  # before anything: see browser.py
            trace_id, parent_span = trace_from(request.headers.get("traceparent", ""))
            g.context = RequestContext(
                method=request.method,
                path=request.path,
                credential=credential(request.headers),
                trace_id=trace_id,
                parent_span=parent_span,
            )
            await gate.check_access(g.context)
            require_json_body()
        except APIError as refused:
            refused.close_connection = True  # answered before the body was read
            raise

    @app.after_request
    async def close_context(response: Response) -> Response:
        context: RequestContext | None = g.get("context")
        trace = context.trace_id if context else secrets.token_hex(16)
        span = (context.span_id if context else "") or secrets.token_hex(8)
        response.headers["traceparent"] = f"00-{trace}-{span}-01"
        response.headers.update(services.browser.cors_headers(request.headers))
        if context is not None:
            gate.audit(context, response.status_code)
        return response

    @app.get("/v1/models")
    async def models() -> Response:
        listed = [
            {"id": m["id"], "object": "model", "created": 0, "owned_by": "inferflux", **m}
            for m in services.models.describe()
        ]
        return json_response({"object": "list", "data": listed})

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        chat = await read_json(CHAT, services.max_body_bytes)

        def render(model: ServedModel, prepared: Prepared) -> Renderer:
            return ChatRenderer(
                model.id, chat.n, len(prepared.prompt), model.tokenizer.piece,
                prepared.tools, prepared.want_logprobs, chat.include_usage,
            )  # fmt: skip

        prepare = partial(pipeline.prepare_chat, chat=chat)
        return await runner.serve(chat.model, chat.keep_alive, prepare, "chat", render, chat.stream)

    @app.post("/v1/completions")
    async def completions() -> Response:
        completion = await read_json(COMPLETION, services.max_body_bytes)

        def render(model: ServedModel, prepared: Prepared) -> Renderer:
            return CompletionRenderer(
                model.id, completion.n, len(prepared.prompt), model.tokenizer.piece,
                prepared.echo, prepared.want_logprobs, completion.include_usage,
            )  # fmt: skip

        prepare = partial(pipeline.prepare_completion, completion=completion)
        return await runner.serve(
            completion.model, completion.keep_alive, prepare, "completion", render,
            completion.stream,
        )  # fmt: skip

    @app.post("/v1/embeddings")
    async def create_embeddings() -> Response:
        return await embeddings(services)

    @app.post("/tokenize")
    async def tokenize() -> Response:
        body = await read_json(TOKENIZE, services.max_body_bytes)
        lease = await services.models.acquire(body.model)
        try:
            tokens = await pipeline.tokenize(lease.model, body)
        finally:
            lease.release()
        counted = {"tokens": tokens, "count": len(tokens), "max_model_len": lease.model.ctx_size}
        return json_response(counted)

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = await read_json(DETOKENIZE, services.max_body_bytes)
        lease = await services.models.acquire(body.model)
        try:
            return json_response({"prompt": pipeline.detokenize(lease.model, body)})
        finally:
            lease.release()

    return app
