"""The Anthropic Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A Messages request is read into the chat completion request it means (`as_chat`), so it
goes through the same pipeline, gate and generation as chat completions; only parsing and
rendering (messages_render.py) are its own. Errors come in Anthropic's shape (http.py
renders every error on /v1/messages that way) and name Anthropic's parameters.
"""

from __future__ import annotations

import msgspec
from quart import Blueprint, Response

from . import pipeline
from .errors import APIError
from .http import json_response, read_json
from .images import image_origins
from .messages_render import MessagesRenderer
from .messages_types import (
    AnyChoice,
    Base64Source,
    CountTokensRequest,
    DocumentBlockIn,
    FileSource,
    ImageBlockIn,
    MessageParam,
    MessagesRequest,
    NoneChoice,
    TextBlockIn,
    TokenCount,
    ToolNameChoice,
    ToolResultBlockIn,
    ToolUseBlockIn,
)
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
    TextPart,
    Tool,
    ToolCallIn,
    ToolChoice,
)
from .runner import Runner
from .served import ServedModel
from .services import Services
from .tool_prompt import ToolPlan, read_tools

MESSAGES = msgspec.json.Decoder(MessagesRequest)
COUNT_TOKENS = msgspec.json.Decoder(CountTokensRequest)


def messages_blueprint(services: Services, runner: Runner) -> Blueprint:
    messages = Blueprint("messages", __name__)

    @messages.post("/v1/messages")
    async def create() -> Response:
        request = await read_json(MESSAGES, services.max_body_bytes)
        origins: dict[int, str] = {}
        chat = as_chat(request, origins)
        images = image_origins(chat.messages, origins)

        async def prepare(model: ServedModel) -> Prepared:
            try:
                return await pipeline.prepare_chat(model, chat)
            except APIError as error:
                raise renamed(error, images) from None

        def render(model: ServedModel, prepared: Prepared) -> Renderer:
            return MessagesRenderer(
                model.id, len(prepared.prompt), model.tokenizer.piece, prepared.tools,
                request.stop_sequences or [],
            )  # fmt: skip

        return await runner.serve(
            request.model, request.keep_alive, prepare, "messages", render, request.stream
        )

    @messages.post("/v1/messages/count_tokens")
    async def count_tokens() -> Response:
        request = await read_json(COUNT_TOKENS, services.max_body_bytes)
        origins: dict[int, str] = {}
        chat = as_chat(request, origins)
        offered = "none" if chat.tool_choice == "none" else "auto"
        tools = ToolPlan(read_tools(chat.tools), offered, parallel=True)
        lease = await services.models.acquire(request.model)
        try:
            model = lease.model
            chars = sum(len(m.text()) for m in chat.messages)
            pipeline.check_prompt_size(model, chars, "messages")
            prompt, _ = await pipeline.messages_prompt(model, chat.messages, tools)
        except APIError as error:
            raise renamed(error, image_origins(chat.messages, origins)) from None
        finally:
            lease.release()
        return json_response(TokenCount(len(prompt)))

    return messages


def renamed(error: APIError, images: dict[str, str] | None = None) -> APIError:
    """The error naming the Anthropic parameter instead of the chat one (`images`: an
    image part's chat parameter -> its block's path)."""
    param = error.param or ""
    if images and param in images:
        error.param = images[param]
    elif param.startswith("tools[") and ".function." in param:
        error.param = param.replace(".function.parameters", ".input_schema")
    elif error.param == "stop":
        error.param = "stop_sequences"
    elif param.startswith("response_format"):
        error.param = "output_config.format.schema"
    return error


def as_chat(
    request: MessagesRequest | CountTokensRequest, origins: dict[int, str] | None = None
) -> ChatCompletionRequest:
    """The chat completion request a Messages request means (image blocks as chat image
    parts, each one's path noted in `origins` by id)."""
    origins = {} if origins is None else origins
    messages: list[ChatMessage] = []
    if request.system:
        system = request.system
        text = system if isinstance(system, str) else "".join(b.text for b in system)
        messages.append(ChatMessage("system", text))
    for i, message in enumerate(request.messages):
        messages += _chat_messages(message, f"messages[{i}].content", origins)
    if not request.messages:
        raise APIError(400, "messages: at least one message is required", param="messages")
    tool_choice, parallel = _tool_choice(request)
    fields: dict[str, object] = {}
    if isinstance(request, MessagesRequest):
        fields = {
            "max_tokens": request.max_tokens,
            "stop": request.stop_sequences or None,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "min_p": request.min_p,
            "seed": request.seed,
            "priority": request.priority,
            "ignore_eos": request.ignore_eos,
            "user": request.metadata.user_id if request.metadata else None,
        }
        output = request.output_config.format if request.output_config else None
        if output is not None:
            fields["response_format"] = JSONSchemaFormat(JSONSchemaSpec(schema=output.schema))
    return ChatCompletionRequest(
        model=request.model,
        messages=messages,
        tools=[
            Tool(FunctionDefinition(t.name, t.description, t.input_schema))
            for t in request.tools or []
        ]
        or None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        **fields,  # type: ignore[arg-type]
    )


def _tool_choice(request: MessagesRequest | CountTokensRequest) -> tuple[ToolChoice | None, bool]:
    choice = request.tool_choice
    if choice is None:
        return None, True
    parallel = not getattr(choice, "disable_parallel_tool_use", False)
    if isinstance(choice, NoneChoice):
        return "none", parallel
    if isinstance(choice, AnyChoice):
        return "required", parallel
    if isinstance(choice, ToolNameChoice):
        return NamedToolChoice(ChosenFunction(choice.name)), parallel
    return "auto", parallel


def _chat_messages(message: MessageParam, param: str, origins: dict[int, str]) -> list[ChatMessage]:
    """One Anthropic message as chat messages: tool results first (as tool messages), then
    the text and images; an assistant's tool_use blocks as its tool_calls."""
    if isinstance(message.content, str):
        return [ChatMessage(message.role, message.content)]
    results: list[ChatMessage] = []
    texts: list[TextPart | ImagePart] = []
    calls: list[ToolCallIn] = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlockIn):
            texts.append(TextPart(block.text))
        elif isinstance(block, ToolUseBlockIn) and message.role == "assistant":
            calls.append(ToolCallIn(FunctionCall(block.name, block.input), id=block.id))
        elif isinstance(block, ToolResultBlockIn) and message.role == "user":
            results.append(ChatMessage("tool", _result_text(block, f"{param}[{j}]"),
                                       tool_call_id=block.tool_use_id))  # fmt: skip
        elif isinstance(block, ImageBlockIn) and message.role == "user":
            texts.append(_image(block, f"{param}[{j}]", origins))
        elif isinstance(block, (ToolUseBlockIn, ToolResultBlockIn, ImageBlockIn)):
            raise _unsupported(f"a {message.role} message cannot hold this block",
                               f"{param}[{j}]")  # fmt: skip
        elif isinstance(block, DocumentBlockIn):
            raise _unsupported("document blocks are not supported", f"{param}[{j}]")
        # thinking / redacted_thinking: earlier reasoning, dropped
    if message.role == "assistant":
        return [ChatMessage("assistant", texts or None, tool_calls=calls or None)]
    return results + ([ChatMessage("user", texts)] if texts else [])


def _image(block: ImageBlockIn, param: str, origins: dict[int, str]) -> ImagePart:
    source = block.source
    if isinstance(source, FileSource):
        raise _unsupported("images by file_id are not supported (this server has no Files "
                           "API); send a base64 source", f"{param}.source")  # fmt: skip
    if isinstance(source, Base64Source):
        image = ImagePart(ImageURL(f"data:{source.media_type};base64,{source.data}"))
        origins[id(image)] = f"{param}.source.data"
    else:
        image = ImagePart(ImageURL(source.url))
        origins[id(image)] = f"{param}.source.url"
    return image


def _result_text(block: ToolResultBlockIn, param: str) -> str:
    content = block.content
    if isinstance(content, list):
        if any(isinstance(part, ImageBlockIn) for part in content):
            raise _unsupported("images in a tool_result are not supported", param)
        content = "".join(part.text for part in content if isinstance(part, TextBlockIn))
    return f"Error: {content}" if block.is_error else content


def _unsupported(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="unsupported_content")
