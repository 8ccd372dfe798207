"""The request pipeline: plain functions from a decoded request to what the scheduler runs.

    prepare_chat / prepare_completion   request Struct + ServedModel -> Prepared
                                        (every check that needs no policy: model, fields,
                                        tools and response_format grammars, the prompt
                                        rendered and tokenized, the context window)
    submit                              Prepared + the gate's ceiling -> Submit

Nothing here touches HTTP or actors, so each step is testable with a tokenizer alone; a
problem is an APIError (400/404) naming the parameter, raised before anything is queued.
Rendering and tokenizing run in a worker thread (`off_loop`), never on the event loop that
also runs the scheduler and the policy; text that cannot fit the context window is refused
by its length before either (ServedModel.max_prompt_chars).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import trio

from ..messages import ImageInput, SamplingParams
from ..model.chat_template import TemplateError
from ..scheduler.messages import Submit
from .errors import APIError
from .images import check_accepted, image_parts, image_prompt, read_images
from .request_types import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    GenerationRequest,
    TokenizeRequest,
    check_unsupported,
    stop_list,
)
from .served import ServedModel
from .structured import response_format_grammar
from .tool_prompt import NO_TOOLS, ToolPlan, plan_tools, render_chat

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """A generation request checked and rendered: what the gate is asked about, and the
    Submit once the gate has set its ceiling."""

    prompt: list[int]
    max_tokens: int | None
    """As the client asked (None: whatever room the context window leaves)."""
    room: int
    """Tokens left in the context window after the prompt."""
    sampling: SamplingParams
    """Everything but max_tokens, which `submit` sets."""
    n: int
    priority: int
    tools: ToolPlan = NO_TOOLS
    echo: str = ""
    """Completions with echo: the prompt text, sent before the completion."""
    images: tuple[ImageInput, ...] = ()
    """Chat images (their rows are image ids in `prompt`: ingress/images.py)."""
    image_s: float = 0.0
    """Seconds it took to decode the images and lay them out."""

    @property
    def want_logprobs(self) -> bool:
        return self.sampling.logprobs >= 0


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _check_common(model: ServedModel, req: GenerationRequest) -> None:
    """The checks every generation request shares (which model it asks for was settled
    by the model directory already)."""
    unsupported = check_unsupported(req)
    if unsupported:
        param, message = unsupported
        raise APIError(400, message, param=param, code="unsupported_parameter")


async def prepare_chat(model: ServedModel, chat: ChatCompletionRequest) -> Prepared:
    _check_common(model, chat)
    if not chat.messages:
        raise _invalid("messages must contain at least one message", "messages")
    if chat.top_logprobs is not None and not chat.logprobs:
        raise _invalid("top_logprobs needs logprobs: true", "top_logprobs")
    tools = await plan_tools(
        model.tokenizer, chat.tools, chat.tool_choice, chat.parallel_tool_calls
    )
    format_grammar = await response_format_grammar(model.tokenizer, chat.response_format)
    if tools.grammar and format_grammar:
        raise _invalid(
            "response_format cannot be combined with tool_choice required or a named "
            "function: the output is then the tool call",
            "response_format",
        )
    check_prompt_size(model, sum(_chars(m) for m in chat.messages), "messages")
    started = time.perf_counter()
    prompt, images = await messages_prompt(model, chat.messages, tools)
    max_tokens = chat.max_completion_tokens or chat.max_tokens
    max_param = "max_completion_tokens" if chat.max_completion_tokens else "max_tokens"
    return Prepared(
        prompt=prompt,
        max_tokens=max_tokens,
        room=context_room(model, prompt, max_tokens, max_param, "messages"),
        sampling=sampling_params(
            chat,
            model.n_vocab,
            grammar=tools.grammar or format_grammar,
            logprobs=(chat.top_logprobs or 0) if chat.logprobs else -1,
        ),
        n=chat.n,
        priority=chat.priority,
        tools=tools,
        images=tuple(images),
        image_s=time.perf_counter() - started if images else 0.0,
    )


async def prepare_completion(model: ServedModel, completion: CompletionRequest) -> Prepared:
    _check_common(model, completion)
    prompt, text = await off_loop(completion_prompt, model, completion.prompt)
    return Prepared(
        prompt=prompt,
        max_tokens=completion.max_tokens,
        room=context_room(model, prompt, completion.max_tokens, "max_tokens", "prompt"),
        sampling=sampling_params(
            completion,
            model.n_vocab,
            logprobs=-1 if completion.logprobs is None else completion.logprobs,
        ),
        n=completion.n,
        priority=completion.priority,
        # The prompt comes back before the completion, as OpenAI does.
        echo=(text if text is not None else model.tokenizer.detokenize(prompt))
        if completion.echo
        else "",
    )


async def off_loop(run: Callable[..., T], *args: Any) -> T:
    """`run(*args)` in a worker thread; a client that leaves stops waiting for it."""
    return await trio.to_thread.run_sync(run, *args, abandon_on_cancel=True)


async def messages_prompt(
    model: ServedModel, messages: list[ChatMessage], tools: ToolPlan = NO_TOOLS
) -> tuple[list[int], list[ImageInput]]:
    """The prompt of chat messages, with their images read and laid out (images.py): the
    one way every API that takes messages (chat, Responses, Messages, count_tokens) makes
    its prompt."""
    parts = image_parts(messages)
    if not parts:
        return await off_loop(chat_prompt, model, messages, tools), []
    check_accepted(model, parts)
    decoded = await off_loop(read_images, parts, model.image_fetch)
    return await off_loop(image_prompt, model, messages, decoded, tools)


def check_prompt_size(model: ServedModel, chars: int, param: str) -> None:
    if chars > model.max_prompt_chars:
        raise APIError(
            400,
            f"the prompt has {chars} characters, more than this model's context window of "
            f"{model.ctx_size} tokens can hold",
            param=param,
            code="context_length_exceeded",
        )


def _chars(message: ChatMessage) -> int:
    calls = message.tool_calls or []
    return len(message.text()) + sum(len(str(c.function.arguments)) for c in calls)


def chat_prompt(
    model: ServedModel, messages: list[ChatMessage], tools: ToolPlan = NO_TOOLS
) -> list[int]:
    """The prompt's tokens: the template's own text may hold special tokens, what the
    client wrote never does (ChatTemplate.render_parts). Blocking: see `off_loop`."""
    rendered = [m.as_template_dict() for m in messages]
    try:
        parts = render_chat(model.template, rendered, tools.offered)
    except TemplateError as exc:
        raise _invalid(str(exc), "messages") from None
    tokenize = model.tokenizer.tokenize
    if not any(model.holds_special_text(text) for text, ours in parts if not ours):
        # Nothing a client wrote could become a special token: the whole text at once,
        # which tokenizes the seams between template and content as the model learned.
        return tokenize("".join(text for text, _ in parts), add_special=True)
    tokens: list[int] = []
    for i, (text, from_template) in enumerate(parts):
        tokens += tokenize(text, add_special=i == 0, parse_special=from_template)
    return tokens


def completion_prompt(
    model: ServedModel, prompt: str | list[str | int]
) -> tuple[list[int], str | None]:
    """The prompt's tokens, and its text when it was sent as text."""
    if isinstance(prompt, list):
        if len({type(item) for item in prompt}) > 1:
            raise _invalid(
                "prompt must be a string, a list of strings, or a list of token ids, not a mix",
                "prompt",
            )
        if prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise _invalid("several prompts in one request are not supported yet", "prompt")
            prompt = prompt[0]
    if isinstance(prompt, str):
        check_prompt_size(model, len(prompt), "prompt")
        tokens = model.tokenizer.tokenize(prompt, add_special=True, parse_special=False)
        text: str | None = prompt
    else:
        tokens, text = check_token_ids(model, [int(t) for t in prompt], "prompt"), None
    if not tokens:
        raise _invalid("prompt must not be empty", "prompt")
    return tokens, text


def check_token_ids(model: ServedModel, tokens: list[int], param: str) -> list[int]:
    bad = [t for t in tokens if not 0 <= t < model.n_vocab]
    if bad:
        raise _invalid(f"token ids out of range: {bad[:5]}", param)
    return tokens


def context_room(
    model: ServedModel, prompt: list[int], max_tokens: int | None, max_param: str, prompt_param: str
) -> int:
    """Tokens the context window leaves after the prompt; 400 when the request cannot fit."""
    room = model.ctx_size - len(prompt)
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        wanted = len(prompt) + (max_tokens or 0)
        raise APIError(
            400,
            f"this model's context window is {model.ctx_size} tokens; the "
            f"prompt has {len(prompt)} tokens and max tokens asks for "
            f"{max_tokens or 0} (total {wanted})",
            param=max_param if room > 0 else prompt_param,
            code="context_length_exceeded",
        )
    return room


def logit_bias(biases: dict[str, float] | None, n_vocab: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's logit_bias ({"token id": bias in [-100, 100]}) checked against the vocab."""
    checked = []
    for key, bias in (biases or {}).items():
        if not re.fullmatch(r"-?[0-9]{1,9}", key) or not 0 <= int(key) < n_vocab:
            raise _invalid(f"logit_bias keys must be token ids in [0, {n_vocab}), got {key!r}",
                           "logit_bias")  # fmt: skip
        if not -100 <= bias <= 100:
            raise _invalid(
                f"logit_bias values must be in [-100, 100], got {bias} for token {key}",
                "logit_bias",
            )
        checked.append((int(key), float(bias)))
    return tuple(checked)


def sampling_params(
    req: GenerationRequest, n_vocab: int, grammar: str = "", logprobs: int = -1
) -> SamplingParams:
    """The request's sampling fields with OpenAI's defaults (max_tokens: see `submit`)."""
    return SamplingParams(
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        seed=req.seed,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        stop=stop_list(req.stop),
        ignore_eos=req.ignore_eos,
        logit_bias=logit_bias(req.logit_bias, n_vocab),
        grammar=grammar,
        logprobs=logprobs,
    )


def submit(
    prepared: Prepared,
    seq_id: int,
    trace_id: str,
    ceiling: int | None,
    principal: str = "anonymous",
) -> Submit:
    """The scheduler's Submit: max_tokens as asked, else the room left, never above the
    gate's ceiling (a request that asked for more was refused by the gate)."""
    room = prepared.room
    max_tokens = min(prepared.max_tokens or room, ceiling or room)
    sampling = msgspec.structs.replace(prepared.sampling, max_tokens=max_tokens)
    return Submit(
        seq_id,
        prepared.prompt,
        sampling,
        prepared.priority,
        trace_id,
        principal=principal,
        images=list(prepared.images),
    )


# the tokenizer extras --------------------------------------------------------------------
async def tokenize(model: ServedModel, body: TokenizeRequest) -> list[int]:
    if (body.prompt is None) == (body.messages is None):
        raise _invalid("send exactly one of prompt or messages", "prompt")
    if body.messages is not None:
        if not body.messages:
            return []
        if image_parts(body.messages):
            raise _invalid("/tokenize does not take images", "messages")
        check_prompt_size(model, sum(_chars(m) for m in body.messages), "messages")
        return await off_loop(chat_prompt, model, body.messages)
    prompt = body.prompt or ""
    check_prompt_size(model, len(prompt), "prompt")
    return await off_loop(
        lambda: model.tokenizer.tokenize(prompt, add_special=True, parse_special=False)
    )


def detokenize(model: ServedModel, body: DetokenizeRequest) -> str:
    return model.tokenizer.detokenize(check_token_ids(model, body.tokens, "tokens"))
