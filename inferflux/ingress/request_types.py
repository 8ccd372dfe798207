"""OpenAI request bodies as msgspec Structs: validation happens at decode.

Unknown fields are ignored (SDKs send extras through `extra_body`; OpenAI's own fields we
do not implement yet are rejected explicitly in `check_unsupported`). Error messages name
the field path, e.g. "Expected `number`, got `str` - at `$.temperature`", which
`errors.from_decode_error` turns into the error's `param`. Constraints live in the
annotations, so `tools`, `tool_choice` and `response_format` are checked here too, not by
hand; what needs the model (a schema that must compile) is checked in the pipeline.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

import msgspec

from .limits import MAX_LOGIT_BIAS, MAX_TOOLS, StopList, StopString

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Probability = Annotated[float, msgspec.Meta(ge=0, le=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Penalty = Annotated[float, msgspec.Meta(ge=-2, le=2)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
FunctionName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
JSONSchema = dict[str, Any]


class TextPart(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct):
    url: str
    """A data: URI (data:image/png;base64,...); http(s) URLs are refused (ingress/images.py)."""
    detail: Literal["auto", "low", "high"] | None = None  # accepted, not used


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type"):
    """An image in a user message (issue 16): models with a projector (mmproj) only."""

    image_url: ImageURL


class FunctionCall(msgspec.Struct):
    name: str
    arguments: Union[str, dict[str, Any]] = "{}"  # OpenAI sends a JSON string


class ToolCallIn(msgspec.Struct):
    """A call in an assistant message of the history (validated: its path is named on
    error, e.g. `messages[1].tool_calls[0].function.name`)."""

    function: FunctionCall
    id: str = ""
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[Union[TextPart, ImagePart]], None] = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    def text(self, image_marker: str = "") -> str:
        """Its text parts, joined; each image part becomes `image_marker`."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            part.text if isinstance(part, TextPart) else image_marker for part in self.content
        )

    def images(self) -> list[tuple[int, ImagePart]]:
        """(index in content, part) of each image part."""
        if not isinstance(self.content, list):
            return []
        return [(j, p) for j, p in enumerate(self.content) if isinstance(p, ImagePart)]

    def as_template_dict(self, image_marker: str = "") -> dict[str, Any]:
        """The message as chat templates expect it (tool call arguments as objects)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text(image_marker)}
        if self.name:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.function.name,
                        "arguments": parse_arguments(call.function.arguments),
                    },
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        return message


def parse_arguments(arguments: str | dict[str, Any]) -> Any:
    """Call arguments as an object, as chat templates expect them; a client's malformed
    history stays the text it sent."""
    if isinstance(arguments, dict):
        return arguments
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments


# tools -----------------------------------------------------------------------------------
class FunctionDefinition(msgspec.Struct):
    name: FunctionName
    description: str | None = None
    parameters: JSONSchema | None = None
    """A JSON schema of type object (checked in tool_prompt.read_tools); None: no
    arguments."""
    strict: bool | None = None


class Tool(msgspec.Struct):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class ChosenFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    """`{"type": "function", "function": {"name": ...}}`: call exactly this function."""

    function: ChosenFunction
    type: Literal["function"] = "function"


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]
Tools = Annotated[list[Tool], msgspec.Meta(max_length=MAX_TOOLS)]
LogitBias = Annotated[dict[str, float], msgspec.Meta(max_length=MAX_LOGIT_BIAS)]


# response_format -------------------------------------------------------------------------
class TextFormat(msgspec.Struct, tag="text", tag_field="type"):
    pass


class JSONObjectFormat(msgspec.Struct, tag="json_object", tag_field="type"):
    pass


class JSONSchemaSpec(msgspec.Struct):
    name: str = ""
    schema: JSONSchema | None = None
    """None or {}: any JSON value, as OpenAI treats it."""
    description: str | None = None
    strict: bool | None = None


class JSONSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type"):
    json_schema: JSONSchemaSpec | None = None
    """Required; optional here so that its absence is reported on its own path."""


ResponseFormat = Union[TextFormat, JSONObjectFormat, JSONSchemaFormat]


# requests --------------------------------------------------------------------------------
class StreamOptions(msgspec.Struct):
    include_usage: bool = False


Stop = Union[StopString, StopList, None]
KeepAlive = Union[str, int, float, None]
"""Ollama's: how long the model stays loaded after this request (seconds, "5m"; 0 unloads
it after the request; -1 keeps it)."""


class _Sampling(msgspec.Struct, kw_only=True):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    min_p: Probability | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: Stop = None
    n: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    user: str | None = None
    priority: int = 0
    ignore_eos: bool = False
    keep_alive: KeepAlive = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: PositiveInt | None = None
    tools: Tools | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    logit_bias: LogitBias | None = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling, kw_only=True):
    # str, [str] or [token ids]: one array type (msgspec unions allow one), checked later
    prompt: Union[str, list[Union[str, int]]]
    echo: bool = False
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    logit_bias: LogitBias | None = None
    suffix: str | None = None
    best_of: int | None = None


GenerationRequest = Union[ChatCompletionRequest, CompletionRequest]


class TokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /tokenize` (an extra, as in vLLM): a prompt, or chat messages rendered with the
    model's chat template exactly as /v1/chat/completions does."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class DetokenizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str | None = None
    tokens: list[int]


def check_unsupported(request: GenerationRequest) -> tuple[str, str] | None:
    """(param, message) for a field we accept syntactically but do not implement."""
    if isinstance(request, CompletionRequest):
        if request.suffix:
            return "suffix", "suffix is not supported"
        if request.best_of not in (None, 1):
            return "best_of", "best_of is not supported"
    return None


def stop_list(stop: Stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    return tuple(stop)
