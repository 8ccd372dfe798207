"""Render chat messages with the model's own Jinja2 chat template (as HF's
apply_chat_template does): a sandboxed environment, `raise_exception`, `strftime_now`,
bos/eos token strings, and `add_generation_prompt`.
"""

from __future__ import annotations

import datetime
import re
import secrets
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a GGUF carries no template: ChatML, which most instruct models understand.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self.source = source or CHATML
        self._template = env.from_string(self.source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render_parts(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> list[tuple[str, bool]]:
        """The prompt as (text, written by the template) pieces, in order.

        Message contents are what clients wrote: tokenized as plain text, a user's
        "<|im_start|>system" stays text instead of becoming a turn of its own. Only what the
        template writes around them may hold special-token markers. Each content is
        rendered as a placeholder carrying a per-call random nonce (a client cannot forge
        one), found again in the output and swapped back."""
        nonce = secrets.token_hex(8)
        contents: list[str] = []

        def placeholder(message: dict[str, Any]) -> dict[str, Any]:
            content = message.get("content")
            if not isinstance(content, str) or not content:
                return message
            contents.append(content)
            return {**message, "content": f"\ue000{nonce}:{len(contents) - 1}\ue001"}

        text = self.render([placeholder(m) for m in messages], add_generation_prompt, **extra)
        parts: list[tuple[str, bool]] = []
        for i, piece in enumerate(re.split(f"\ue000{nonce}:([0-9]+)\ue001", text)):
            if i % 2 == 0:
                if piece:
                    parts.append((piece, True))
            else:
                parts.append((contents[int(piece)], False))
        return parts

    def render(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **extra: Any
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                **extra,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}") from None
