"""Chat through the official client, as the crash and scheduling tests drive a server:
each question's undisturbed text, and a stream whose parts are watched as they come."""

from __future__ import annotations

from typing import Any

import openai


async def reference_texts(
    client: openai.AsyncOpenAI, questions: list[str], **kwargs: Any
) -> dict[str, str]:
    """Each question's reply, asked alone and not streamed."""
    texts = {}
    for q in questions:
        reply = await client.chat.completions.create(
            messages=[{"role": "user", "content": q}], **kwargs
        )
        texts[q] = reply.choices[0].message.content or ""
    return texts


async def stream_chat(
    client: openai.AsyncOpenAI,
    question: str,
    parts: list[str],
    usage: list[int] | None = None,
    **kwargs: Any,
) -> str:
    """Stream the reply, appending each text delta to `parts` as it arrives (a test
    watches them mid-stream); returns the finish reason ("" if none came). With `usage`,
    the stream asks for its usage and appends the completion token count to it."""
    finish = ""
    if usage is not None:
        kwargs["stream_options"] = {"include_usage": True}
    chunks = await client.chat.completions.create(
        messages=[{"role": "user", "content": question}], stream=True, **kwargs
    )
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        if usage is not None and chunk.usage:
            usage.append(chunk.usage.completion_tokens)
    return finish
