"""The loaded model as the ingress sees it: what requests are checked and rendered against."""

from __future__ import annotations

from dataclasses import dataclass

from ..model.chat_template import ChatTemplate
from ..worker.llama import Model


@dataclass(frozen=True)
class ServedModel:
    """Fixed for the server's life: a tokenizer (the GGUF's vocabulary only, no weights),
    its chat template and the context window a sequence gets."""

    id: str
    tokenizer: Model
    template: ChatTemplate
    ctx_size: int

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.info.n_vocab
