"""POST /v1/embeddings, OpenAI's shape: the request and the response as msgspec Structs."""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

from .request_types import PositiveInt


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """`input`: a string, a list of strings, a list of token ids, or a list of lists of
    token ids (checked in embeddings.py: msgspec cannot tell the list kinds apart)."""

    input: Union[str, list[Any]]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveInt | None = None
    user: str | None = None
    keep_alive: Any = None
    """Ollama's: how long the model stays loaded after this request."""


class Embedding(msgspec.Struct):
    index: int
    embedding: Union[list[float], str]
    """floats, or base64 of the little-endian float32 array (encoding_format base64)."""
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: Literal["list"] = "list"
