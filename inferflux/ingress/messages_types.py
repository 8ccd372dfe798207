"""The Anthropic Messages API (`/v1/messages`) as msgspec Structs: the request and its
content blocks, the message object, and the stream events."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec

from .limits import MAX_TOOLS, StopList
from .request_types import (
    FunctionName,
    JSONSchema,
    KeepAlive,
    PositiveInt,
    Probability,
    Temperature,
)


# request ---------------------------------------------------------------------------------
class TextBlockIn(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class FileSource(msgspec.Struct, tag="file", tag_field="type"):
    file_id: str


class ImageBlockIn(msgspec.Struct, tag="image", tag_field="type"):
    """An image (issue 16), read as chat's image_url (ingress/images.py): base64 as a data:
    URI, a url as chat's URL; a file needs a Files API this server does not have."""

    source: Union[Base64Source, URLSource, FileSource]


class DocumentBlockIn(msgspec.Struct, tag="document", tag_field="type"):
    source: dict[str, Any]


class ToolUseBlockIn(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlockIn(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: Union[str, list[Union[TextBlockIn, ImageBlockIn]]] = ""
    is_error: bool = False


class ThinkingBlockIn(msgspec.Struct, tag="thinking", tag_field="type"):
    """An earlier answer's reasoning, sent back as history (dropped: nothing here
    reasons)."""

    thinking: str = ""
    signature: str = ""


class RedactedThinkingBlockIn(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str = ""


BlockIn = Union[
    TextBlockIn,
    ImageBlockIn,
    DocumentBlockIn,
    ToolUseBlockIn,
    ToolResultBlockIn,
    ThinkingBlockIn,
    RedactedThinkingBlockIn,
]


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: Union[str, list[BlockIn]]


class ToolParam(msgspec.Struct, kw_only=True):
    name: FunctionName
    input_schema: JSONSchema
    description: str | None = None
    type: Literal["custom"] | None = None
    """Custom (client) tools only: server tools (web search, code execution) are not run
    here."""


class AutoChoice(msgspec.Struct, tag="auto", tag_field="type"):
    disable_parallel_tool_use: bool = False


class AnyChoice(msgspec.Struct, tag="any", tag_field="type"):
    disable_parallel_tool_use: bool = False


class ToolNameChoice(msgspec.Struct, tag="tool", tag_field="type"):
    name: str
    disable_parallel_tool_use: bool = False


class NoneChoice(msgspec.Struct, tag="none", tag_field="type"):
    pass


ToolChoice = Union[AutoChoice, AnyChoice, ToolNameChoice, NoneChoice]


class JSONOutputFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    schema: JSONSchema


class OutputConfig(msgspec.Struct):
    """Structured output (`format`); `effort` is accepted and has no effect here."""

    format: JSONOutputFormat | None = None
    effort: str | None = None


class Metadata(msgspec.Struct):
    user_id: str | None = None


class _Conversation(msgspec.Struct, kw_only=True):
    model: str
    messages: list[MessageParam]
    system: Union[str, list[TextBlockIn], None] = None
    tools: Annotated[list[ToolParam], msgspec.Meta(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    """Accepted and ignored: the served model does not reason."""


class MessagesRequest(_Conversation, kw_only=True):
    max_tokens: PositiveInt
    stop_sequences: StopList | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stream: bool = False
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    # extensions, as on chat completions
    min_p: Probability | None = None
    seed: int | None = None
    priority: int = 0
    ignore_eos: bool = False
    keep_alive: KeepAlive = None


class CountTokensRequest(_Conversation, kw_only=True):
    pass


# response --------------------------------------------------------------------------------
class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Union[TextBlock, ToolUseBlock]
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


class MessageUsage(msgspec.Struct):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(msgspec.Struct, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(msgspec.Struct):
    input_tokens: int


# stream events ---------------------------------------------------------------------------
class MessageStart(msgspec.Struct, tag="message_start", tag_field="type"):
    message: Message


class BlockStart(msgspec.Struct, tag="content_block_start", tag_field="type"):
    index: int
    content_block: ContentBlock


class TextDelta(msgspec.Struct, tag="text_delta", tag_field="type"):
    text: str


class InputJSONDelta(msgspec.Struct, tag="input_json_delta", tag_field="type"):
    partial_json: str


class BlockDelta(msgspec.Struct, tag="content_block_delta", tag_field="type"):
    index: int
    delta: Union[TextDelta, InputJSONDelta]


class BlockStop(msgspec.Struct, tag="content_block_stop", tag_field="type"):
    index: int


class StopDelta(msgspec.Struct):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDelta(msgspec.Struct, tag="message_delta", tag_field="type"):
    delta: StopDelta
    usage: MessageUsage


class MessageStop(msgspec.Struct, tag="message_stop", tag_field="type"):
    pass


class Ping(msgspec.Struct, tag="ping", tag_field="type"):
    pass


Event = Union[MessageStart, BlockStart, BlockDelta, BlockStop, MessageDelta, MessageStop, Ping]
