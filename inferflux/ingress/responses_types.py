"""The OpenAI Responses API (`/v1/responses`) as msgspec Structs: the request, its input
items, the response object, its output items and the stream events.

Input items are decoded one by one (responses_api.input_messages) because a message item
may leave out its `type`; everything else is validated at decode, its path named on error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from .limits import MAX_TOOLS
from .request_types import (
    FunctionName,
    JSONObjectFormat,
    JSONSchema,
    KeepAlive,
    PositiveInt,
    Probability,
    Temperature,
    TextFormat,
)


# request ---------------------------------------------------------------------------------
class InputText(msgspec.Struct, tag="input_text", tag_field="type"):
    text: str


class OutputTextIn(msgspec.Struct, tag="output_text", tag_field="type"):
    """An earlier answer's text, sent back as history."""

    text: str


class InputImage(msgspec.Struct, tag="input_image", tag_field="type"):
    """An image (issue 16): `image_url` read as chat's image_url (ingress/images.py);
    `file_id` needs a Files API this server does not have."""

    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high"] | None = None  # accepted, not used


class InputFile(msgspec.Struct, tag="input_file", tag_field="type"):
    file_id: str | None = None


class RefusalIn(msgspec.Struct, tag="refusal", tag_field="type"):
    refusal: str


ContentPart = Union[InputText, OutputTextIn, InputImage, InputFile, RefusalIn]


class MessageItem(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: Union[str, list[ContentPart]]
    type: Literal["message"] = "message"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    call_id: str
    name: str
    arguments: str
    type: Literal["function_call"] = "function_call"


class FunctionCallOutputItem(msgspec.Struct, kw_only=True):
    call_id: str
    output: Union[str, list[ContentPart]]
    type: Literal["function_call_output"] = "function_call_output"


InputItem = Union[MessageItem, FunctionCallItem, FunctionCallOutputItem]


class FunctionTool(msgspec.Struct, tag="function", tag_field="type"):
    """A function tool (Responses flattens chat's `function` object into the tool)."""

    name: FunctionName
    description: str | None = None
    parameters: JSONSchema | None = None
    strict: bool | None = None


class FunctionChoice(msgspec.Struct, tag="function", tag_field="type"):
    name: str


ToolChoice = Union[Literal["none", "auto", "required"], FunctionChoice]


class JSONSchemaText(msgspec.Struct, tag="json_schema", tag_field="type"):
    name: str = ""
    schema: JSONSchema | None = None
    description: str | None = None
    strict: bool | None = None


TextFormatIn = Union[TextFormat, JSONObjectFormat, JSONSchemaText]


class TextConfig(msgspec.Struct):
    format: TextFormatIn | None = None


class ResponsesRequest(msgspec.Struct, kw_only=True):
    model: str
    input: Union[str, list[dict[str, Any]]]
    instructions: str | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    tools: Annotated[list[FunctionTool], msgspec.Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    background: bool = False
    reasoning: dict[str, Any] | None = None
    """Accepted and echoed; the served model does not reason."""
    # extensions, as on chat completions
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    seed: int | None = None
    priority: int = 0
    ignore_eos: bool = False
    keep_alive: KeepAlive = None


# response --------------------------------------------------------------------------------
class TopLogprobOut(msgspec.Struct):
    token: str
    bytes: list[int]
    logprob: float


class LogprobOut(msgspec.Struct):
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprobOut]


class OutputText(msgspec.Struct, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = []
    logprobs: list[LogprobOut] = []


class OutputMessage(msgspec.Struct, tag="message", tag_field="type", kw_only=True):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallOut(msgspec.Struct, tag="function_call", tag_field="type", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Union[OutputMessage, FunctionCallOut]


class InputTokensDetails(msgspec.Struct):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(msgspec.Struct):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(msgspec.Struct):
    code: str
    message: str


class TextConfigOut(msgspec.Struct):
    format: dict[str, Any]


class ResponseObject(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: dict[str, Any] | None
    store: bool
    temperature: float
    text: TextConfigOut
    tool_choice: Any
    tools: list[dict[str, Any]]
    top_p: float
    truncation: str
    usage: ResponseUsage | None = None
    user: str | None
    metadata: dict[str, str]


class DeletedResponse(msgspec.Struct):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# stream events (each carries the stream's sequence_number) ------------------------------
class _Event(msgspec.Struct, kw_only=True):
    type: str
    sequence_number: int = 0
    """Set when the event is sent (responses_render.ResponsesRenderer._send)."""


class ResponseEvent(_Event, kw_only=True):
    """response.created / in_progress / completed / incomplete / failed."""

    response: ResponseObject


class ItemEvent(_Event, kw_only=True):
    """response.output_item.added / done."""

    output_index: int
    item: OutputItem


class PartEvent(_Event, kw_only=True):
    """response.content_part.added / done."""

    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class TextDeltaEvent(_Event, kw_only=True):
    type: str = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int = 0
    delta: str
    logprobs: list[LogprobOut] = []


class TextDoneEvent(_Event, kw_only=True):
    type: str = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int = 0
    text: str
    logprobs: list[LogprobOut] = []


class ArgumentsDeltaEvent(_Event, kw_only=True):
    type: str = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event, kw_only=True):
    type: str = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(_Event, kw_only=True):
    type: str = "error"
    code: str | None
    message: str
    param: str | None


Event = Union[
    ResponseEvent,
    ItemEvent,
    PartEvent,
    TextDeltaEvent,
    TextDoneEvent,
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ErrorEvent,
]
