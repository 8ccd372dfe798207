"""The OpenAI-compatible HTTP surface (quart-trio), served by hypercorn in the ingress actor.

Every handler validates with msgspec, renders/tokenizes, asks the policy actor, then opens
a scheduler stream. Anything a client sent wrong is a 4xx in OpenAI's error shape; an
unexpected server fault is logged and answered 500 in the same shape (never a hang).
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import msgspec
import trio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from actors import ActorInfo, ActorRef

from ..messages import SamplingParams
from ..metrics import Metrics
from ..model.chat_template import ChatTemplate, TemplateError
from ..policy.actor import Authorize, Decision
from ..scheduler.messages import Submit
from ..tracing import RequestTracer
from ..worker.llama import Model
from .auth import Guard, StreamBody, admit, ask_policy, authorize_request, end, watch
from .auth import install as install_policy
from .choices import Choice
from .errors import APIError, from_decode_error
from .generation import (
    SSE_DONE,
    Generation,
    InFlight,
    merged,
    next_seq_id,
    now,
    request_id,
    sibling,
    sse,
    start_all,
    total_usage,
)
from .openai_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    check_unsupported,
    stop_list,
)
from .structured import response_format_grammar
from .tools import ToolPlan, plan_tools, render_chat

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def trace_from(header: str) -> tuple[str, str]:
    """(trace id, caller's span id) of a valid W3C traceparent, else a fresh trace id and
    no parent (all-zero ids are invalid by the spec)."""
    match = _TRACEPARENT.fullmatch(header.strip().lower())
    if match and match.group(1) != "0" * 32 and match.group(2) != "0" * 16:
        return match.group(1), match.group(2)
    return secrets.token_hex(16), ""


def logit_bias(biases: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias ({"token id": bias in [-100, 100]}) checked against the vocab."""
    checked = []
    for key, bias in (biases or {}).items():
        if not re.fullmatch(r"-?[0-9]{1,9}", key) or not 0 <= int(key) < n_vocab:
            raise APIError(
                400,
                f"logit_bias keys must be token ids in [0, {n_vocab}), got {key!r}",
                param="logit_bias",
                code="invalid_value",
            )
        if not -100 <= bias <= 100:
            raise APIError(
                400,
                f"logit_bias values must be in [-100, 100], got {bias} for token {key}",
                param="logit_bias",
                code="invalid_value",
            )
        checked.append((int(key), float(bias)))
    return tuple(checked)


log = logging.getLogger("inferflux.ingress")

_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_tokenize_decoder = msgspec.json.Decoder(TokenizeRequest)
_detokenize_decoder = msgspec.json.Decoder(DetokenizeRequest)


@dataclass
class Frontend:
    """What the HTTP layer needs from the rest of the server."""

    model_id: str
    tokenizer: Model
    template: ChatTemplate
    ctx_size: int
    scheduler: ActorRef
    policy: ActorRef
    metrics: Metrics
    is_ready: Callable[[], bool]
    max_body_bytes: int
    snapshot: Callable[[], ActorInfo] | None = None
    tracer: RequestTracer | None = None  # OpenTelemetry export, when configured
    in_flight: InFlight = field(default_factory=InFlight)
    nursery: trio.Nursery | None = None  # the ingress actor's: tasks that outlive a handler
    guard: Guard | None = None  # auth, audit, output guardrails (ingress/auth.py); None: off
    draining: bool = False


def create_app(front: Frontend) -> QuartTrio:
    app = QuartTrio("inferflux")
    app.config["MAX_CONTENT_LENGTH"] = front.max_body_bytes
    # Quart cuts responses after 60 s by default; a long generation is legitimate, and the
    # scheduler ends every request (finish, client gone, or error).
    app.config["RESPONSE_TIMEOUT"] = None
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = True

    def error_response(error: APIError) -> Response:
        return Response(error.body(), status=error.status, headers=error.headers())

    @app.errorhandler(APIError)
    async def on_api_error(error: APIError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def on_http_error(error: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
        message = error.description or error.name
        if error.code == 413:
            message = f"request body larger than the limit of {front.max_body_bytes} bytes"
        return error_response(APIError(error.code or 400, message, code=code.get(error.code or 0)))

    @app.errorhandler(Exception)
    async def on_unexpected(error: Exception) -> Response:
        log.exception("unhandled error in request")
        return error_response(
            APIError(
                500,
                f"internal error: {type(error).__name__}",
                type="server_error",
                code="internal_error",
            )
        )

    def readiness() -> tuple[bool, list[str]]:
        reasons = []
        if front.draining:
            reasons.append("draining")
        if not front.is_ready():
            reasons.append("no model worker ready")
        return not reasons, reasons

    @app.before_request
    async def take_trace() -> None:
        g.trace_id, g.parent_span = trace_from(request.headers.get("traceparent", ""))

    @app.after_request
    async def give_trace(response: Response) -> Response:
        trace = getattr(g, "trace_id", "") or secrets.token_hex(16)
        span = getattr(g, "span_id", "") or secrets.token_hex(8)
        response.headers["traceparent"] = f"00-{trace}-{span}-01"
        return response

    install_policy(app, front)  # after take_trace: the access check logs the trace id

    @app.get("/livez")
    async def livez() -> Response:
        return Response(b'{"status":"alive"}', content_type="application/json")

    @app.get("/readyz")
    async def readyz() -> Response:
        ready, reasons = readiness()
        body = {"status": "ready"} if ready else {"status": "not ready", "reason": reasons[0]}
        return json_response(body, 200 if ready else 503)

    @app.get("/healthz")
    async def healthz() -> Response:
        """Both answers in one JSON body (always 200 while the process serves HTTP)."""
        ready, reasons = readiness()
        return json_response(
            {
                "status": "ready" if ready else "not ready",
                "live": True,
                "ready": ready,
                "reasons": reasons,
                "model": front.model_id,
            },
            200,
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(front.metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/debug/actors")
    async def actors_snapshot() -> Response:
        """The supervision tree as JSON (what inferflux-top shows)."""
        if front.snapshot is None:
            raise APIError(404, "no actor tree attached", code="not_found")
        return Response(msgspec.json.encode(front.snapshot()), content_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(
            {
                "object": "list",
                "data": [
                    {"id": front.model_id, "object": "model", "created": 0, "owned_by": "inferflux"}
                ],
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions() -> Response:
        chat = await _parse(_chat_decoder)
        if not chat.messages:
            raise APIError(
                400,
                "messages must contain at least one message",
                param="messages",
                code="invalid_value",
            )
        if chat.top_logprobs is not None and not chat.logprobs:
            raise APIError(
                400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
            )
        tools = await plan_tools(
            front.tokenizer, chat.tools, chat.tool_choice, chat.parallel_tool_calls
        )
        format_grammar = await response_format_grammar(front.tokenizer, chat.response_format)
        if tools.grammar and format_grammar:
            raise APIError(
                400,
                "response_format cannot be combined with tool_choice required or a named "
                "function: the output is then the tool call",
                param="response_format",
                code="invalid_value",
            )
        grammar = tools.grammar or format_grammar
        prompt = _chat_prompt(chat.messages, tools)
        max_tokens = chat.max_completion_tokens or chat.max_tokens
        submit = await _prepare(
            chat,
            prompt,
            max_tokens,
            "max_completion_tokens" if chat.max_completion_tokens else "max_tokens",
            grammar=grammar,
            logprobs=(chat.top_logprobs or 0) if chat.logprobs else -1,
        )
        return await _respond(submit, chat, "chat", tools=tools)

    @app.post("/v1/completions")
    async def completions() -> Response:
        completion = await _parse(_completion_decoder)
        prompt_field = completion.prompt
        if isinstance(prompt_field, list):
            kinds = {type(item) for item in prompt_field}
            if len(kinds) > 1:
                raise APIError(
                    400,
                    "prompt must be a string, a list of strings, or a list of token ids, not a mix",
                    param="prompt",
                    code="invalid_value",
                )
        if isinstance(prompt_field, list) and prompt_field and isinstance(prompt_field[0], str):
            if len(prompt_field) != 1:
                raise APIError(
                    400,
                    "several prompts in one request are not supported yet",
                    param="prompt",
                    code="invalid_value",
                )
            prompt_field = prompt_field[0]
        if isinstance(prompt_field, str):
            prompt = front.tokenizer.tokenize(prompt_field, add_special=True, parse_special=False)
        else:
            prompt = [int(t) for t in prompt_field]
            bad = [t for t in prompt if not 0 <= t < front.tokenizer.info.n_vocab]
            if bad:
                raise APIError(
                    400, f"token ids out of range: {bad[:5]}", param="prompt", code="invalid_value"
                )
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        submit = await _prepare(
            completion,
            prompt,
            completion.max_tokens,
            "max_tokens",
            logprobs=-1 if completion.logprobs is None else completion.logprobs,
        )
        echo = ""
        if completion.echo:  # the prompt comes back before the completion, as OpenAI does
            echo = (
                prompt_field
                if isinstance(prompt_field, str)
                else front.tokenizer.detokenize(prompt)
            )
        return await _respond(submit, completion, "completion", echo)

    def _chat_prompt(chat_messages: list[ChatMessage], tools: ToolPlan | None = None) -> list[int]:
        messages = [m.as_template_dict() for m in chat_messages]
        offered = tools.functions if tools is not None and tools.active else []
        try:
            prompt_text = render_chat(front.template, messages, offered)
        except TemplateError as exc:
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None
        return front.tokenizer.tokenize(prompt_text, add_special=True, parse_special=True)

    @app.post("/tokenize")
    async def tokenize() -> Response:
        body = await _decode(_tokenize_decoder)
        if body.model is not None:
            _check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(
                400, "send exactly one of prompt or messages", param="prompt", code="invalid_value"
            )
        if body.messages is not None:
            tokens = _chat_prompt(body.messages) if body.messages else []
        else:
            tokens = front.tokenizer.tokenize(body.prompt, add_special=True, parse_special=False)
        return json_response(
            {"tokens": tokens, "count": len(tokens), "max_model_len": front.ctx_size}
        )

    @app.post("/detokenize")
    async def detokenize() -> Response:
        body = await _decode(_detokenize_decoder)
        if body.model is not None:
            _check_model(body.model)
        bad = [t for t in body.tokens if not 0 <= t < front.tokenizer.info.n_vocab]
        if bad:
            raise APIError(
                400, f"token ids out of range: {bad[:5]}", param="tokens", code="invalid_value"
            )
        return json_response({"prompt": front.tokenizer.detokenize(body.tokens)})

    async def _parse(decoder: msgspec.json.Decoder) -> Any:
        """Read, decode and check the fields every generation request shares."""
        parsed = await _decode(decoder)
        _check_common(parsed)
        return parsed

    async def _decode(decoder: msgspec.json.Decoder) -> Any:
        try:
            return decoder.decode(await _read_body())
        except msgspec.DecodeError as exc:
            raise from_decode_error(exc) from None
        except ValueError as exc:  # msgspec raises UnicodeDecodeError for invalid UTF-8
            raise APIError(
                400, f"request body is not valid UTF-8 JSON: {exc}", code="invalid_json"
            ) from None
        except RecursionError:  # free-form fields (tools, tool_choice) nested absurdly deep
            raise APIError(400, "request body is nested too deeply", code="invalid_json") from None

    async def _read_body() -> bytes:
        length = request.content_length
        if length is not None and length > front.max_body_bytes:
            raise APIError(
                413,
                f"request body of {length} bytes is larger than the limit of "
                f"{front.max_body_bytes} bytes",
                code="request_too_large",
            )
        return await request.get_data(cache=False)

    def _check_model(model: str | None) -> None:
        if model != front.model_id:
            raise APIError(
                404,
                f"model {model!r} does not exist; this server serves {front.model_id!r}",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )

    def _check_common(req: ChatCompletionRequest | CompletionRequest) -> None:
        _check_model(req.model)
        unsupported = check_unsupported(req)
        if unsupported:
            param, message = unsupported
            raise APIError(400, message, param=param, code="unsupported_parameter")

    async def _prepare(
        req: ChatCompletionRequest | CompletionRequest,
        prompt: list[int],
        max_tokens: int | None,
        max_param: str,
        grammar: str = "",
        logprobs: int = -1,
    ) -> Submit:
        if front.draining:
            raise APIError(
                503,
                "the server is shutting down; retry on another replica",
                type="service_unavailable",
                code="draining",
                retry_after_s=1,
            )
        room = front.ctx_size - len(prompt)
        if room <= 0 or (max_tokens is not None and max_tokens > room):
            wanted = len(prompt) + (max_tokens or 0)
            raise APIError(
                400,
                f"this model's context window is {front.ctx_size} tokens; the "
                f"prompt has {len(prompt)} tokens and max tokens asks for "
                f"{max_tokens or 0} (total {wanted})",
                param=max_param if room > 0 else "messages",
                code="context_length_exceeded",
            )
        seq_id = next_seq_id()
        decision = await _authorize(authorize_request(front, req, seq_id, prompt, max_tokens, room))
        sampling = SamplingParams(
            max_tokens=min(max_tokens or room, decision.max_tokens or room),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=stop_list(req.stop),
            ignore_eos=req.ignore_eos,
            logit_bias=logit_bias(req.logit_bias, front.tokenizer.info.n_vocab),
            grammar=grammar,
            logprobs=logprobs,
        )
        log.info("request %d trace %s: %d prompt tokens", seq_id, g.trace_id, len(prompt))
        return Submit(seq_id, prompt, sampling, req.priority, g.trace_id)

    async def _authorize(request: Authorize) -> Decision:
        """Ask the policy actor (a crash or restart is retried, a timeout is not: see
        ask_policy); a denial raises (401/403/429)."""
        return admit(front, request, await ask_policy(front.policy, request))

    async def _respond(
        submit: Submit, req: Any, kind: str, echo: str = "", tools: ToolPlan | None = None
    ) -> Response:
        generations = [Generation(front.scheduler, submit, front.in_flight)]
        for i in range(1, req.n):
            generations.append(Generation(front.scheduler, sibling(submit, i), front.in_flight))
        if front.tracer is not None:
            span = front.tracer.start(
                f"inferflux {kind}",
                g.trace_id,
                g.parent_span,
                {
                    "gen_ai.request.model": front.model_id,
                    "gen_ai.usage.input_tokens": len(submit.prompt),
                    "inferflux.seq_id": submit.seq_id,
                },
            )
            generations[0].span = span
            g.span_id = format(span.get_span_context().span_id, "016x")
        want_logprobs = submit.sampling.logprobs >= 0
        choices = [
            Choice(i, kind, front.tokenizer.piece, tools, echo, want_logprobs) for i in range(req.n)
        ]
        try:
            # The first choice starts alone: once its first token is out its prompt is
            # resident; the others then start together and copy those KV cells.
            await generations[0].start()
            await start_all(generations[1:])
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                for generation in generations:
                    await generation.close()
                end(front, submit.seq_id, exc)  # its audit line, its tokens back (499 if gone)
            raise
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            # StreamBody: closed (generations, audit ticket) even if never iterated.
            stream = _stream(generations, choices, kind, include_usage)
            body = StreamBody(front, generations, stream)
            return Response(
                body, content_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        try:
            async for i, delta in watch(front, generations, merged(generations, front.nursery)):
                choices[i].add(delta)
        finally:
            with trio.CancelScope(shield=True):
                for generation in generations:
                    await generation.close()
        use = total_usage(len(submit.prompt), choices)
        if kind == "chat":
            return json_response(
                {
                    "id": request_id("chatcmpl"),
                    "object": "chat.completion",
                    "created": now(),
                    "model": front.model_id,
                    "choices": [choice.message() for choice in choices],
                    "usage": use,
                }
            )
        return json_response(
            {
                "id": request_id("cmpl"),
                "object": "text_completion",
                "created": now(),
                "model": front.model_id,
                "choices": [choice.text_choice() for choice in choices],
                "usage": use,
            }
        )

    async def _stream(
        generations: list[Generation], choices: list[Choice], kind: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        rid = request_id("chatcmpl" if kind == "chat" else "cmpl")
        created = now()
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(choice: dict[str, Any]) -> bytes:
            return sse(
                {
                    "id": rid,
                    "object": obj,
                    "created": created,
                    "model": front.model_id,
                    "choices": [choice],
                }
            )

        def part_chunk(choice: Choice, part: dict[str, Any], logprobs: Any) -> bytes:
            if kind == "chat":
                body = {"index": choice.index, "delta": part, "logprobs": logprobs}
            else:
                body = {"index": choice.index, "text": part["text"], "logprobs": logprobs}
            return chunk({**body, "finish_reason": None})

        try:
            for choice in choices:
                if kind == "chat":
                    yield part_chunk(choice, {"role": "assistant", "content": ""}, None)
                if choice.text:  # echo
                    yield part_chunk(choice, {"text": choice.text[0]}, None)
            async for i, delta in watch(front, generations, merged(generations, front.nursery)):
                choice = choices[i]
                parts = choice.add(delta)
                logprobs = (
                    choice.chat_logprobs(delta.logprobs)
                    if kind == "chat"
                    else choice.completion_logprobs(delta.logprobs)
                )
                if delta.logprobs and not parts:
                    parts = [{} if kind == "chat" else {"text": ""}]
                for j, part in enumerate(parts):
                    yield part_chunk(choice, part, logprobs if j == 0 else None)
                if delta.finish_reason:
                    end: dict[str, Any] = {"index": i, "finish_reason": choice.final_reason}
                    if kind == "chat":
                        end.update(delta={}, logprobs=None)
                    else:
                        end.update(text="", logprobs=None)
                    yield chunk(end)
            if include_usage:
                yield sse(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": front.model_id,
                        "choices": [],
                        "usage": total_usage(len(generations[0].submit.prompt), choices),
                    }
                )
            yield SSE_DONE
        except APIError as error:
            # Headers are gone already: the error travels as an SSE event, then the end.
            yield b"data: " + error.body() + b"\n\n"
            yield SSE_DONE
        finally:
            with trio.CancelScope(shield=True):
                for generation in generations:
                    await generation.close()

    return app


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(payload), status=status, content_type="application/json")
