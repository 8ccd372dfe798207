"""`response_format` -> an llguidance grammar the worker enforces token by token.

The grammar is compiled and checked here, before anything is queued, so a schema using a
feature the constraint engine lacks is a 400 naming that feature, never a failed stream.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import msgspec
import trio

from ..worker.constraint import check_grammar
from ..worker.llama import Model
from .errors import APIError
from .limits import MAX_SCHEMA_BYTES
from .request_types import JSONObjectFormat, ResponseFormat, TextFormat

# Compact but readable JSON, and no free-form whitespace: a small model given the choice
# tends to emit newlines forever instead of closing the object.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def check_schema_size(schema: Any, param: str) -> None:
    size = len(msgspec.json.encode(schema))
    if size > MAX_SCHEMA_BYTES:
        raise APIError(
            400,
            f"{param}: a schema of {size} bytes is larger than the limit of "
            f"{MAX_SCHEMA_BYTES} bytes",
            param=param,
            code="schema_too_large",
        )


def schema_grammar(schema: dict[str, Any]) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)


_compiling: dict[str, trio.Event] = {}  # grammars being checked right now


async def checked(model: Model, grammar: str, param: str) -> str:
    """`grammar`, once it compiles for this vocabulary; else a 400 on `param`.
    Compiling a big schema can take a while: it runs off the event loop, once for
    concurrent requests with the same grammar (then check_grammar's cache answers)."""
    while grammar in _compiling:
        await _compiling[grammar].wait()
    _compiling[grammar] = done = trio.Event()
    try:
        error = await trio.to_thread.run_sync(check_grammar, model, grammar)
    finally:
        del _compiling[grammar]
        done.set()
    if error:
        raise APIError(
            400,
            f"{param}: unsupported or invalid schema: {error}",
            param=param,
            code="invalid_schema",
        )
    return grammar


async def response_format_grammar(model: Model, response_format: ResponseFormat | None) -> str:
    """The grammar for a chat request's response_format ("" for free text)."""
    if response_format is None or isinstance(response_format, TextFormat):
        return ""
    if isinstance(response_format, JSONObjectFormat):
        return await checked(model, schema_grammar({"type": "object"}), "response_format")
    if response_format.json_schema is None:
        raise APIError(
            400,
            "response_format.json_schema must be an object with a `schema` object",
            param="response_format.json_schema",
            code="invalid_value",
        )
    # No schema means any JSON value, as OpenAI treats it.
    schema = response_format.json_schema.schema or {}
    check_schema_size(schema, "response_format.json_schema.schema")
    try:
        grammar = schema_grammar(schema)
    except ValueError as exc:
        raise APIError(
            400, f"invalid JSON schema: {exc}", param="response_format.json_schema.schema"
        ) from None
    return await checked(model, grammar, "response_format.json_schema.schema")


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
