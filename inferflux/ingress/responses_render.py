"""Responses API rendering: one `response` object, or its stream of typed events.

A stream opens with response.created and response.in_progress; text arrives as a
`message` output item (output_item.added, content_part.added, output_text.delta...,
output_text.done, content_part.done, output_item.done) and each call as a `function_call`
item (output_item.added, function_call_arguments.delta..., .done, output_item.done); it
ends with response.completed (or response.incomplete when max_output_tokens cut it), whose
response is exactly what a non-streamed request gets. Every event carries the stream's
sequence_number.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..messages import TokenLogprob
from ..scheduler.messages import Delta
from .answer import AnswerStream, finish_reason, whole_answer
from .errors import APIError
from .render import ChoiceText, total_usage
from .request_types import ChatMessage, FunctionCall, ToolCallIn
from .responses_types import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ErrorEvent,
    Event,
    FunctionCallOut,
    IncompleteDetails,
    InputTokensDetails,
    ItemEvent,
    LogprobOut,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    PartEvent,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    TextConfigOut,
    TextDeltaEvent,
    TextDoneEvent,
    TopLogprobOut,
)
from .tool_calls import ToolCall
from .tool_prompt import ToolPlan

_encode = msgspec.json.Encoder().encode
OnDone = Callable[[bytes, ChatMessage], None]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class ResponsesRenderer:
    def __init__(
        self,
        request: ResponsesRequest,
        model_id: str,
        prompt_tokens: int,
        piece: Callable[[int], bytes],
        tools: ToolPlan,
        want_logprobs: bool,
        on_done: OnDone,
    ) -> None:
        self.request, self.model_id, self.prompt_tokens = request, model_id, prompt_tokens
        self.piece, self.tools, self.want_logprobs = piece, tools, want_logprobs
        self.on_done = on_done
        self.id, self.created_at = new_id("resp"), int(time.time())
        self.choice = ChoiceText(0)
        # streamed only
        self.stream = AnswerStream(tools)
        self.sequence = 0
        self.items: list[OutputItem] = []
        self.message: OutputMessage | None = None  # the item being written
        self.call: FunctionCallOut | None = None
        self.pending_logprobs: list[LogprobOut] = []  # of text held back (a stop string?)

    # streamed -------------------------------------------------------------------------
    def opening(self) -> list[bytes]:
        response = self._response("in_progress", [])
        return [
            self._send(ResponseEvent(type="response.created", response=response)),
            self._send(ResponseEvent(type="response.in_progress", response=response)),
        ]

    def chunks(self, index: int, delta: Delta) -> list[bytes]:
        self.choice.absorb(delta)
        self.pending_logprobs += self._logprobs(delta.logprobs)
        out: list[bytes] = []
        for part in self.stream.feed(delta):
            if isinstance(part.content, str) and part.content:
                out += self._text(part.content)
            for call in part.tool_calls or []:
                if isinstance(call.function.name, str):  # a new call
                    out += self._close_items()
                    self.call = FunctionCallOut(
                        id=new_id("fc"), call_id=str(call.id), name=call.function.name,
                        arguments="", status="in_progress",
                    )  # fmt: skip
                    out.append(self._item("response.output_item.added", self.call))
                if call.function.arguments and self.call is not None:
                    self.call.arguments += call.function.arguments
                    out.append(self._send(ArgumentsDeltaEvent(
                        item_id=self.call.id, output_index=len(self.items),
                        delta=call.function.arguments,
                    )))  # fmt: skip
        if delta.finish_reason:
            if not self.items and self.message is None and self.call is None:
                out += self._open_message()  # an empty answer is an empty message
            out += self._close_items()
        return out

    def closing(self) -> list[bytes]:
        reason = finish_reason(self.choice, self.stream.calls)
        response = self._final(self.items, reason)
        kind = "response.completed" if response.status == "completed" else "response.incomplete"
        event = self._send(ResponseEvent(type=kind, response=response))
        self._done(response, self.stream.calls, self._message_text())
        return [event]

    def failure(self, error: APIError) -> list[bytes]:
        response = self._response("failed", self.items)
        response.error = ResponseError(error.code or "server_error", error.message)
        return [
            self._send(ErrorEvent(code=error.code, message=error.message, param=error.param)),
            self._send(ResponseEvent(type="response.failed", response=response)),
        ]

    def _text(self, text: str) -> list[bytes]:
        out = self._open_message() if self.message is None else []
        assert self.message is not None
        part = self.message.content[0]
        part.text += text
        logprobs, self.pending_logprobs = self.pending_logprobs, []
        part.logprobs += logprobs
        out.append(self._send(TextDeltaEvent(
            item_id=self.message.id, output_index=len(self.items), delta=text,
            logprobs=logprobs,
        )))  # fmt: skip
        return out

    def _open_message(self) -> list[bytes]:
        self.message = OutputMessage(id=new_id("msg"), status="in_progress", content=[])
        added = self._item("response.output_item.added", self.message)
        self.message.content.append(OutputText(text=""))
        return [added, self._part("response.content_part.added", OutputText(text=""))]

    def _close_items(self) -> list[bytes]:
        out = []
        if self.message is not None:
            message, part = self.message, self.message.content[0]
            part.logprobs += self.pending_logprobs
            self.pending_logprobs = []
            out.append(self._send(TextDoneEvent(
                item_id=message.id, output_index=len(self.items), text=part.text,
                logprobs=part.logprobs,
            )))  # fmt: skip
            out.append(self._part("response.content_part.done", part))
            message.status = "completed"
            out.append(self._item("response.output_item.done", message))
            self.items.append(message)
            self.message = None
        if self.call is not None:
            call = self.call
            out.append(self._send(ArgumentsDoneEvent(
                item_id=call.id, output_index=len(self.items), name=call.name,
                arguments=call.arguments,
            )))  # fmt: skip
            call.status = "completed"
            out.append(self._item("response.output_item.done", call))
            self.items.append(call)
            self.call = None
        return out

    def _item(self, kind: str, item: OutputItem) -> bytes:
        return self._send(ItemEvent(type=kind, output_index=len(self.items), item=item))

    def _part(self, kind: str, part: OutputText) -> bytes:
        assert self.message is not None
        event = PartEvent(type=kind, item_id=self.message.id, output_index=len(self.items),
                          part=part)  # fmt: skip
        return self._send(event)

    def _send(self, event: Event) -> bytes:
        event.sequence_number = self.sequence
        self.sequence += 1
        # Encoded now: later changes to the items must not rewrite what was sent.
        return b"event: " + event.type.encode() + b"\ndata: " + _encode(event) + b"\n\n"

    def _message_text(self) -> str | None:
        texts = [i.content[0].text for i in self.items if isinstance(i, OutputMessage)]
        return "".join(texts) if texts else None

    # whole ----------------------------------------------------------------------------
    def add(self, index: int, delta: Delta) -> None:
        self.choice.absorb(delta)

    def whole(self) -> bytes:
        answer = whole_answer(self.choice, self.tools)
        items: list[OutputItem] = []
        if answer.content is not None:
            text = OutputText(text=answer.content, logprobs=self._logprobs(self.choice.logprobs))
            items.append(OutputMessage(id=new_id("msg"), status="completed", content=[text]))
        for call in answer.calls:
            items.append(FunctionCallOut(
                id=new_id("fc"), call_id=call.id, name=call.name, arguments=call.arguments,
                status="completed",
            ))  # fmt: skip
        response = self._final(items, answer.finish_reason)
        return self._done(response, answer.calls, answer.content)

    # shared ---------------------------------------------------------------------------
    def _final(self, items: list[OutputItem], reason: str | None) -> ResponseObject:
        response = self._response("completed", items)
        if reason in ("length", "content_filter"):
            response.status = "incomplete"
            cause = "max_output_tokens" if reason == "length" else "content_filter"
            response.incomplete_details = IncompleteDetails(cause)  # type: ignore[arg-type]
        usage = total_usage(self.prompt_tokens, [self.choice])
        response.usage = ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(usage.prompt_tokens_details.cached_tokens),
            output_tokens=usage.completion_tokens,
            output_tokens_details=OutputTokensDetails(),
            total_tokens=usage.total_tokens,
        )
        return response

    def _done(self, response: ResponseObject, calls: list[ToolCall], text: str | None) -> bytes:
        body = _encode(response)
        tool_calls = [ToolCallIn(FunctionCall(c.name, c.arguments), id=c.id) for c in calls]
        self.on_done(body, ChatMessage("assistant", text, tool_calls=tool_calls or None))
        return body

    def _response(self, status: Any, output: list[OutputItem]) -> ResponseObject:
        request = self.request
        form = request.text.format if request.text is not None else None
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            model=self.model_id,
            output=list(output),
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            reasoning=request.reasoning,
            store=request.store,
            temperature=1.0 if request.temperature is None else request.temperature,
            text=TextConfigOut(msgspec.to_builtins(form) if form else {"type": "text"}),
            tool_choice=msgspec.to_builtins(request.tool_choice or "auto"),
            tools=[msgspec.to_builtins(tool) for tool in request.tools or []],
            top_p=1.0 if request.top_p is None else request.top_p,
            truncation=request.truncation or "disabled",
            user=request.user,
            metadata=request.metadata or {},
        )

    def _logprobs(self, items: list[TokenLogprob]) -> list[LogprobOut]:
        if not self.want_logprobs:
            return []
        return [
            LogprobOut(*self._entry(item.token, item.logprob),
                       [TopLogprobOut(*self._entry(t, lp)) for t, lp in item.top])
            for item in items
        ]  # fmt: skip

    def _entry(self, token: int, logprob: float) -> tuple[str, list[int], float]:
        raw = self.piece(token)
        return raw.decode("utf-8", "replace"), list(raw), logprob
