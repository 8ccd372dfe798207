"""One running sequence as the worker's engine holds it: its tokens and KV position, its
sampler, grammar and detokenizer, and what the current step planned and produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..messages import TokenLogprob
from .constraint import Constraint
from .output import TextOutput
from .sampling import Sampler


@dataclass(frozen=True, eq=False)
class ImageRows:
    """One image chunk's embeddings, for tokens[start : start + len(rows)] (image ids)."""

    start: int
    rows: np.ndarray  # float32, rows x the model's embedding width

    @property
    def end(self) -> int:
        return self.start + len(self.rows)


@dataclass(eq=False)
class Sequence:
    seq_id: int
    slot: int
    tokens: list[int]  # prefilled in chunks: the prompt (+ on recompute what was generated)
    n_past: int  # tokens of this sequence already in the KV cache
    sampler: Sampler
    output: TextOutput
    max_tokens: int
    n_generated: int
    ignore_eos: bool
    n_prompt: int  # tokens[:n_prompt] is the prompt, the rest was generated (recompute)
    constraint: Constraint | None = None  # structured output: masks logits each step
    logprobs: int = -1  # SamplingParams.logprobs
    next_token: int = -1  # sampled, not yet decoded
    logit_index: int = -1
    draft: list[int] = field(default_factory=list)  # this step: tokens guessed after next_token
    pending_logprob: np.ndarray | None = None  # the row just sampled, when logprobs are asked
    output_index: int = -1  # this step: its first row among the rows with logits
    picks: list[int] | None = None  # this step, greedy fast path: argmax of each of its rows
    fast_greedy: bool = False  # plain greedy: its rows are sampled by _pick_greedy
    prompt_done_this_step: int = 0
    new_tokens: list[int] = field(default_factory=list)
    new_text: list[str] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    images: list[ImageRows] = field(default_factory=list)  # in prompt order
    image_rows_this_step: int = 0  # image rows decoded this step (before the batch)
    export_to: str = ""  # a prefill job: its KV state's staging file (Admit.export_to)

    def image_at(self, position: int) -> ImageRows | None:
        """The image chunk whose rows hold this position, if any."""
        for image in self.images:
            if image.start <= position < image.end:
                return image
        return None

    def text_end(self, position: int) -> int:
        """Where the run of text tokens from this position ends (the next image's start)."""
        return min((i.start for i in self.images if i.start >= position), default=len(self.tokens))

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.tokens)
