"""Bounds on what one request may ask for, so that no client can make the work every user
shares (the engine step, the event loop) slow for everyone. Each is a 400 naming the field,
raised before anything is queued (docs/security.md).

The numbers follow OpenAI's where it has one (4 stop sequences, 128 tools) and are
generous elsewhere: each is far above what a real request needs and far below what costs
the server measurable time.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
"""A stop string is matched on every token of its sequence, inside the shared step:
50,000 stop strings of 80 characters cost ~40 ms per token per sequence."""
MAX_LOGIT_BIAS = 1024
MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024
"""A JSON schema (response_format, one tool's parameters) as JSON: compiling a grammar
grows with it."""
ADMIN_BODY_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 8 * 1024 * 1024
"""Of one image's file (decoded from base64, or fetched: image_fetch.py); the body limit
(server.max_body_bytes) applies to the request as a whole, too."""
MAX_EMBEDDING_INPUTS = 2048
"""OpenAI's limit on the inputs of one embeddings request."""

StopString = Annotated[str, msgspec.Meta(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], msgspec.Meta(max_length=MAX_STOP_SEQUENCES)]
