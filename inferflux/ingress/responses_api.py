"""The OpenAI Responses API: `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`.

A Responses request is read into the chat completion request it means (`as_chat`), so it
goes through the same pipeline, gate and generation as chat completions; only parsing and
rendering (responses_render.py) are its own. Errors name the Responses parameter (`input`,
`max_output_tokens`, `text.format`), not the chat one they were found in.
"""

from __future__ import annotations

from typing import Any

import msgspec
from quart import Blueprint, Response

from . import pipeline
from .context import current
from .errors import APIError
from .http import json_response, read_json
from .images import image_origins
from .pipeline import Prepared
from .render import Renderer
from .request_types import (
    ChatCompletionRequest,
    ChatMessage,
    ChosenFunction,
    FunctionCall,
    FunctionDefinition,
    ImagePart,
    ImageURL,
    JSONSchemaFormat,
    JSONSchemaSpec,
    NamedToolChoice,
    ResponseFormat,
    TextPart,
    Tool,
    ToolCallIn,
    ToolChoice,
)
from .response_store import ResponseStore
from .responses_render import ResponsesRenderer
from .responses_types import (
    ContentPart,
    DeletedResponse,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputItem,
    InputText,
    JSONSchemaText,
    MessageItem,
    OutputTextIn,
    ResponsesRequest,
)
from .runner import Runner
from .served import ServedModel
from .services import Services

RESPONSES = msgspec.json.Decoder(ResponsesRequest)
LOGPROBS_INCLUDE = "message.output_text.logprobs"

# Where a chat parameter's problem lives in a Responses request.
PARAMS = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format.json_schema.schema": "text.format.schema",
    "response_format.json_schema": "text.format",
    "response_format.type": "text.format.type",
    "response_format": "text.format",
}


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _not_found(response_id: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"no response with id {response_id!r}", param=param, code="response_not_found"
    )


def responses_blueprint(services: Services, runner: Runner, store: ResponseStore) -> Blueprint:
    responses = Blueprint("responses", __name__)

    @responses.post("/v1/responses")
    async def create() -> Response:
        request = await read_json(RESPONSES, services.max_body_bytes)
        if request.background:
            raise APIError(
                400, "background responses are not supported", param="background",
                code="unsupported_parameter",
            )  # fmt: skip
        context = current()
        history: list[ChatMessage] = []
        if request.previous_response_id is not None:
            stored = store.get(context.principal, request.previous_response_id)
            if stored is None:
                raise _not_found(request.previous_response_id, "previous_response_id")
            history = stored.conversation
        origins: dict[int, str] = {}
        conversation = history + input_messages(request.input, origins)
        chat = as_chat(request, conversation)
        images = image_origins(chat.messages, origins)
        # Kept once it completes (a stream completes after this handler returned).
        principal = context.principal

        def keep(body: bytes, answer: ChatMessage) -> None:
            if request.store:
                response_id = msgspec.json.decode(body)["id"]
                store.put(principal, response_id, body, [*conversation, answer])

        async def prepare(model: ServedModel) -> Prepared:
            try:
                return await pipeline.prepare_chat(model, chat)
            except APIError as error:
                raise renamed(error, images) from None

        def render(model: ServedModel, prepared: Prepared) -> Renderer:
            return ResponsesRenderer(
                request, model.id, len(prepared.prompt), model.tokenizer.piece,
                prepared.tools, prepared.want_logprobs, on_done=keep,
            )  # fmt: skip

        return await runner.serve(
            request.model, request.keep_alive, prepare, "responses", render, request.stream
        )

    @responses.get("/v1/responses/<response_id>")
    async def retrieve(response_id: str) -> Response:
        stored = store.get(current().principal, response_id)
        if stored is None:
            raise _not_found(response_id)
        return Response(stored.body, content_type="application/json")

    @responses.delete("/v1/responses/<response_id>")
    async def delete(response_id: str) -> Response:
        if not store.delete(current().principal, response_id):
            raise _not_found(response_id)
        return json_response(DeletedResponse(response_id))

    return responses


def renamed(error: APIError, images: dict[str, str] | None = None) -> APIError:
    """The error with the chat parameter it names replaced by the Responses one (`images`:
    an image part's chat parameter -> its path in `input`)."""
    if images and error.param in images:
        error.param = images[error.param]
        return error
    for chat_param, param in PARAMS.items():
        if error.param is not None and error.param == chat_param:
            error.message = error.message.replace(chat_param, param)
            error.param = param
            break
    if error.param is not None and error.param.startswith("tools[") and ".function." in error.param:
        error.message = error.message.replace(".function.", ".")
        error.param = error.param.replace(".function.", ".")
    return error


# request -> chat completion request ------------------------------------------------------
def as_chat(request: ResponsesRequest, messages: list[ChatMessage]) -> ChatCompletionRequest:
    """The chat completion request a Responses request means; `instructions` become the
    system message (they do not carry over to a later response)."""
    if request.instructions:
        messages = [ChatMessage("system", request.instructions), *messages]
    logprobs = LOGPROBS_INCLUDE in (request.include or []) or request.top_logprobs is not None
    return ChatCompletionRequest(
        model=request.model,
        messages=messages,
        max_tokens=request.max_output_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        min_p=request.min_p,
        seed=request.seed,
        user=request.user,
        priority=request.priority,
        ignore_eos=request.ignore_eos,
        tools=[
            Tool(FunctionDefinition(t.name, t.description, t.parameters, t.strict))
            for t in request.tools or []
        ]
        or None,
        tool_choice=_tool_choice(request),
        parallel_tool_calls=request.parallel_tool_calls,
        response_format=_response_format(request),
        logprobs=logprobs or None,
        top_logprobs=request.top_logprobs if logprobs else None,
    )


def _tool_choice(request: ResponsesRequest) -> ToolChoice | None:
    choice = request.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    return NamedToolChoice(ChosenFunction(choice.name))


def _response_format(request: ResponsesRequest) -> ResponseFormat | None:
    form = request.text.format if request.text is not None else None
    if isinstance(form, JSONSchemaText):
        return JSONSchemaFormat(JSONSchemaSpec(form.name, form.schema, form.description))
    return form


def input_messages(
    given: str | list[dict[str, Any]], origins: dict[int, str] | None = None
) -> list[ChatMessage]:
    """The input as chat messages: message items as they are (input_image parts as chat
    image parts, each one's path noted in `origins` by id), consecutive function_call
    items as one assistant message with tool_calls, a function_call_output as a tool
    message."""
    origins = {} if origins is None else origins
    if isinstance(given, str):
        return [ChatMessage("user", given)]
    messages: list[ChatMessage] = []
    for i, raw in enumerate(given):
        item = _item(raw, i)
        if isinstance(item, MessageItem):
            content = _content(item.content, f"input[{i}].content", origins)
            messages.append(ChatMessage(item.role, content))
        elif isinstance(item, FunctionCallItem):
            call = ToolCallIn(FunctionCall(item.name, item.arguments), id=item.call_id)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                last.tool_calls.append(call)
            else:
                messages.append(ChatMessage("assistant", None, tool_calls=[call]))
        else:
            output = _content(item.output, f"input[{i}].output", None)
            messages.append(ChatMessage("tool", output, tool_call_id=item.call_id))
    if not messages:
        raise _invalid("input must hold at least one item", "input")
    return messages


_ITEM_TYPES: dict[str, type[InputItem]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def _item(raw: dict[str, Any], i: int) -> InputItem:
    kind = raw.get("type", "message")
    if kind not in _ITEM_TYPES:
        raise APIError(
            400, f"input[{i}].type {kind!r} is not supported here (message, function_call, "
            "function_call_output are)", param=f"input[{i}].type", code="unsupported_value",
        )  # fmt: skip
    try:
        return msgspec.convert(raw, _ITEM_TYPES[kind])
    except msgspec.ValidationError as exc:
        text, _, path = str(exc).partition(" - at `$")
        param = f"input[{i}]" + path.rstrip("`")
        raise _invalid(f"{text} (at {param})", param) from None


def _content(
    content: str | list[ContentPart], param: str, origins: dict[int, str] | None
) -> list[TextPart | ImagePart] | str:
    """A message's content as chat parts; images only where `origins` notes them (message
    items), not in a function_call_output."""
    if isinstance(content, str):
        return content
    parts: list[TextPart | ImagePart] = []
    for j, part in enumerate(content):
        if isinstance(part, InputImage) and origins is not None:
            parts.append(_image(part, f"{param}[{j}]", origins))
            continue
        if not isinstance(part, (InputText, OutputTextIn)):
            raise APIError(
                400, f"{type(part).__name__} content is not supported here",
                param=f"{param}[{j}]", code="unsupported_content",
            )  # fmt: skip
        parts.append(TextPart(part.text))
    return parts


def _image(part: InputImage, param: str, origins: dict[int, str]) -> ImagePart:
    if part.image_url is None:
        raise APIError(
            400, "images by file_id are not supported (this server has no Files API); "
            "send image_url with a data: URI", param=f"{param}.file_id",
            code="unsupported_content",
        )  # fmt: skip
    image = ImagePart(ImageURL(part.image_url, part.detail))
    origins[id(image)] = f"{param}.image_url"
    return image
