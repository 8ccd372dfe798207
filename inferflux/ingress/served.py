"""A loaded model as the ingress sees it: what requests are checked and rendered against."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ..model.chat_template import ChatTemplate
from ..worker.llama import Model
from ..worker.projector import Projector
from .image_fetch import ImageFetch


@dataclass(frozen=True)
class ServedModel:
    """Fixed while the model is loaded: a tokenizer (the GGUF's vocabulary only, no
    weights), its chat template and the context window a sequence gets."""

    id: str
    tokenizer: Model
    template: ChatTemplate
    ctx_size: int
    mmproj: str = ""
    """The model's projector file: it takes images (issue 16)."""
    projector: Projector | None = field(default=None, compare=False)
    """Lays images out (positions, the model's text around them); no encoding here."""
    image_fetch: ImageFetch = field(default_factory=ImageFetch, compare=False)
    """The hosts image URLs may be fetched from (server.image_fetch; none by default)."""

    @classmethod
    def open(
        cls,
        model_id: str,
        path: str,
        ctx_size: int,
        mmproj: str = "",
        image_fetch: ImageFetch | None = None,
    ) -> ServedModel:
        """Load the GGUF's vocabulary and walk it once for the checks that need it;
        ctx_size is capped at what the model was trained for. Blocking (~0.5 s for the
        default model): run it in a thread."""
        tokenizer = Model(path, vocab_only=True)
        projector = Projector(mmproj, tokenizer) if mmproj else None
        info = tokenizer.info
        template = ChatTemplate(
            info.chat_template,
            tokenizer.detokenize([info.bos], special=True),
            tokenizer.detokenize([info.eos], special=True),
        )
        ctx = min(ctx_size, info.n_ctx_train or ctx_size)
        fetch = image_fetch or ImageFetch()
        served = cls(model_id, tokenizer, template, ctx, mmproj, projector, fetch)
        _ = served.max_prompt_chars, served.special_texts
        return served

    @property
    def n_vocab(self) -> int:
        return self.tokenizer.info.n_vocab

    @cached_property
    def special_texts(self) -> list[str]:
        """Texts that tokenize as one special token (`<|im_start|>`...)."""
        return self.tokenizer.special_texts()

    @cached_property
    def embedding_size(self) -> int:
        """The length of this model's embedding vectors (from the GGUF's metadata: a
        vocabulary-only load has no tensors to ask)."""
        meta = self.tokenizer.meta
        value = meta(f"{meta('general.architecture')}.embedding_length")
        return int(value) if value.isdigit() else 0

    def holds_special_text(self, text: str) -> bool:
        return any(special in text for special in self.special_texts)

    @cached_property
    def max_prompt_chars(self) -> int:
        """No text longer than this fits the context window: every token covers at most
        the longest piece of the vocabulary (in bytes, which are never fewer than
        characters). Checked before tokenizing, which is what costs."""
        piece = self.tokenizer.piece
        longest = max(len(piece(token, special=True)) for token in range(self.n_vocab))
        return self.ctx_size * max(longest, 1)
