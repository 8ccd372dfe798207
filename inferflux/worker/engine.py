"""The batched step: one llama_decode per step for every running sequence.

Each step packs, in this order and within `step_tokens`:
  1. one token for every decoding sequence (its last sampled token), then
  2. prompt chunks of prefilling sequences, oldest first (chunked prefill: a long prompt
     takes several steps and never stalls the decodes of others).
Logits are requested only where a token must be sampled (a decode, or the last chunk of a
prompt). Sampling, detokenization and stop strings then run per sequence, and the step's
outcome is one StepResult for all of them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import llama_cpp as L
import numpy as np

from ..messages import Admit, SeqOutput, StepResult, TokenLogprob
from .constraint import Constraint, GrammarError
from .llama import Context, Model
from .output import TextOutput
from .sampling import Sampler

# ggml's CPU flash attention rounds the rows of any chunk below 64 rows of one stream the
# way it rounds a lone decode, and switches to a tiled kernel that rounds differently at 64
# (GGML_FA_TILE_Q). So:
# - recompute replays the tokens a client already has (decodes the first time) in chunks
#   of at most this many;
# - a prompt's last rows get a chunk of their own of at most this many, so the logits of
#   its first token are the same whether the prompt was prefilled cold or all but its last
#   token came from the prefix cache (same seed, same request, same output). That costs
#   one extra step for prompts over 63 tokens; earlier chunks keep full size (capping
#   them too costs 3x on long-prompt prefill).
SMALL_CHUNK = 63

log = logging.getLogger("inferflux.worker")


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
    prompt_done_this_step: int = 0
    new_tokens: list[int] = field(default_factory=list)
    new_text: list[str] = field(default_factory=list)
    new_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.tokens)


class Engine:
    def __init__(self, model: Model, context: Context) -> None:
        self.model = model
        self.context = context
        self.sequences: dict[int, Sequence] = {}
        self._finished: list[SeqOutput] = []
        self.steps = 0

    @property
    def idle(self) -> bool:
        return not self.sequences and not self._finished

    # control -------------------------------------------------------------------------
    def admit(self, admit: Admit) -> None:
        if admit.seq_id in self.sequences:
            raise ValueError(f"sequence {admit.seq_id} is already running")
        ctx = self.context
        if admit.copy_from >= 0:
            # Copy the whole source stream, then cut it back to the shared prefix below:
            # between per-slot streams llama.cpp only copies whole sequences.
            ctx.seq_rm(admit.slot, 0)
            ctx.seq_cp(admit.copy_from, admit.slot, -1, -1)
        # Recompute (n_generated > 0): the tokens already sent are prefilled with the
        # prompt. In per-slot KV streams that gives bit-identical logits, so the
        # continuation equals the undisturbed run; penalties, the RNG and the detokenizer
        # are brought to where they were after those tokens.
        generated = admit.tokens[len(admit.tokens) - admit.n_generated :]
        constraint = None
        if admit.sampling.grammar:
            try:
                constraint = Constraint(self.model, admit.sampling.grammar)
            except GrammarError as exc:  # the ingress validated it: never the client's fault
                log.error("sequence %d: grammar rejected: %s", admit.seq_id, exc)
                self._finished.append(SeqOutput(admit.seq_id, [], "", "error", error=str(exc)))
                return
            for token in generated:
                constraint.consume(token)
        sampler = Sampler(admit.sampling, self.model.info.n_vocab)
        for token in generated:
            sampler.accept(token)
        sampler.skip_draws(len(generated))
        output = TextOutput(admit.sampling.stop)
        replayed = "".join(output.feed(self.model.piece(t)) for t in generated)
        n_past = min(admit.n_cached, len(admit.tokens) - 1)  # the last token gives logits
        ctx.seq_rm(admit.slot, n_past)  # anything past what is reused is dropped
        seq = Sequence(
            seq_id=admit.seq_id,
            slot=admit.slot,
            tokens=admit.tokens,
            n_past=n_past,
            sampler=sampler,
            output=output,
            max_tokens=admit.sampling.max_tokens,
            n_generated=admit.n_generated,
            ignore_eos=admit.sampling.ignore_eos,
            n_prompt=len(admit.tokens) - admit.n_generated,
            constraint=constraint,
            logprobs=admit.sampling.logprobs,
        )
        self.sequences[admit.seq_id] = seq
        if replayed[admit.text_sent :]:
            seq.new_text.append(replayed[admit.text_sent :])

    def cancel(self, seq_id: int) -> None:
        seq = self.sequences.get(seq_id)
        if seq is not None:
            self._finish(seq, "cancelled")

    # the step ------------------------------------------------------------------------
    def step(self) -> StepResult:
        start = time.perf_counter()
        n_tokens, batch_seqs = self._fill_batch()
        if n_tokens:
            code = self.context.decode(n_tokens)
            if code != 0:
                self._on_decode_failure(code, batch_seqs)
            else:
                for seq in batch_seqs:
                    seq.n_past += seq.prompt_done_this_step or 1
                    if seq.logit_index >= 0:
                        self._sample(seq)
        outputs = self._finished
        self._finished = []
        for seq in self.sequences.values():
            if seq.new_tokens or seq.prompt_done_this_step:
                outputs.append(
                    SeqOutput(
                        seq.seq_id,
                        seq.new_tokens,
                        "".join(seq.new_text),
                        None,
                        seq.prompt_done_this_step,
                        seq.n_past,
                        seq.new_logprobs,
                    )
                )
                seq.new_tokens, seq.new_text, seq.new_logprobs = [], [], []
            seq.prompt_done_this_step = 0
        self.steps += 1
        return StepResult(
            self.steps, len(batch_seqs), n_tokens, time.perf_counter() - start, outputs
        )

    def _fill_batch(self) -> tuple[int, list[Sequence]]:
        """Choose this step's tokens (decodes first, then prompt chunks, within the budget),
        then lay them out in slot order: llama.cpp splits a batch over per-slot KV streams
        into ubatches of consecutive slots, so slot order keeps a step at one ubatch plus
        one per multi-token chunk."""
        capacity = self.context.n_batch
        planned: list[tuple[Sequence, int]] = []  # (sequence, tokens this step)
        room = capacity
        for seq in self.sequences.values():
            if not seq.prefilling and room > 0:
                planned.append((seq, 1))
                room -= 1
        for seq in self.sequences.values():
            if seq.prefilling and room > 0:
                if seq.n_past < seq.n_prompt:  # the prompt; replayed tokens start a new chunk
                    left = seq.n_prompt - seq.n_past
                    n = min(room, left)
                    if n == left and n > SMALL_CHUNK:
                        n -= SMALL_CHUNK  # the last rows go alone, next step
                else:
                    n = min(room, SMALL_CHUNK, len(seq.tokens) - seq.n_past)
                planned.append((seq, n))
                room -= n
        batch = self.context.batch
        i = 0
        for seq, n in sorted(planned, key=lambda p: p[0].slot):
            if not seq.prefilling:
                self._put(batch, i, seq.next_token, seq.n_past, seq.slot, True)
                seq.logit_index = i
                seq.prompt_done_this_step = 0
                i += 1
                continue
            chunk = seq.tokens[seq.n_past : seq.n_past + n]
            completes = seq.n_past + n == len(seq.tokens)
            for j, token in enumerate(chunk):
                last = completes and j == n - 1
                self._put(batch, i + j, token, seq.n_past + j, seq.slot, last)
            seq.logit_index = i + n - 1 if completes else -1
            seq.prompt_done_this_step = n
            i += n
        return i, [seq for seq, _ in planned]

    @staticmethod
    def _put(batch: object, i: int, token: int, pos: int, slot: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = slot
        batch.logits[i] = logits

    def _sample(self, seq: Sequence) -> None:
        log_probs = None
        if seq.logprobs >= 0 or seq.constraint is not None:  # most sequences need neither
            logits = L.llama_get_logits_ith(self.context.ptr, seq.logit_index)
            # Logprobs are the model's own distribution, read before any grammar mask.
            if seq.logprobs >= 0:
                log_probs = log_softmax(logits, self.model.info.n_vocab)
            if seq.constraint is not None:
                seq.constraint.apply(logits)
        token = seq.sampler.sample(self.context.ptr, seq.logit_index)
        seq.logit_index = -1
        if self.model.is_eog(token) and not seq.ignore_eos:
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        seq.new_tokens.append(token)
        seq.new_text.append(seq.output.feed(self.model.piece(token)))
        if log_probs is not None:
            seq.new_logprobs.append(token_logprob(log_probs, token, seq.logprobs))
        if seq.constraint is not None:
            seq.constraint.consume(token)
            if seq.constraint.failed:  # a runtime limit of the grammar engine: say so
                self._finish(seq, "error", f"constrained decoding failed: {seq.constraint.failed}")
                return
        if seq.output.stopped or (seq.constraint is not None and seq.constraint.complete):
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.max_tokens:
            self._finish(seq, "length")
        elif seq.n_past + 1 >= self.context.cells_per_slot:
            # Its slot's stream is full: a safety net, admission caps prompt + max_tokens.
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, reason: str, error: str = "") -> None:
        if reason in ("stop", "length"):
            seq.new_text.append(seq.output.flush())
        self._finished.append(
            SeqOutput(
                seq.seq_id,
                seq.new_tokens,
                "".join(seq.new_text),
                reason,
                seq.prompt_done_this_step,
                seq.n_past,
                seq.new_logprobs,
                error,
            )
        )
        seq.sampler.close()
        del self.sequences[seq.seq_id]

    def _on_decode_failure(self, code: int, batch_seqs: list[Sequence]) -> None:
        """KV cache full (code 1): preempt the newest sequence in the batch; the scheduler
        re-admits it by recompute once cells free up. Other codes are fatal for the step."""
        if code != 1 or not batch_seqs:
            raise RuntimeError(f"llama_decode failed with code {code}")
        victim = max(batch_seqs, key=lambda s: s.seq_id)
        for seq in batch_seqs:
            seq.prompt_done_this_step = 0
            seq.logit_index = -1
            self.context.seq_rm(seq.slot, seq.n_past)  # nothing half-written survives
        # The failed ubatch may have left partial cells for the victim: drop them.
        self.context.seq_rm(victim.slot, 0)
        victim.n_past = 0
        self._finish(victim, "preempted")

    def reset(self) -> None:
        """Forget every sequence and all KV: a new scheduler attached, and its accounting
        starts from empty slots (its predecessor's requests ended with it)."""
        self.close()
        self._finished.clear()
        self.context.clear()

    def close(self) -> None:
        for seq in self.sequences.values():
            seq.sampler.close()
        self.sequences.clear()


def log_softmax(logits: object, n_vocab: int) -> np.ndarray:
    row = np.ctypeslib.as_array(logits, shape=(n_vocab,)).astype(np.float64)
    top = row.max()
    return row - (top + np.log(np.exp(row - top).sum()))


def token_logprob(log_probs: np.ndarray, token: int, k: int) -> TokenLogprob:
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(log_probs, -k)[-k:]
        best = best[np.argsort(log_probs[best])[::-1]]
        top = [(int(t), float(log_probs[t])) for t in best]
    return TokenLogprob(token, float(log_probs[token]), top)
