"""The batched step: one llama_decode per step for every running sequence.

Each step packs, in this order and within `step_tokens`:
  1. one token for every decoding sequence (its last sampled token), then
  2. prompt chunks of prefilling sequences, oldest first (chunked prefill: a long prompt
     takes several steps and never stalls the decodes of others). While sequences are
     decoding and `max_step_s` is set, the chunks are also cut to what fits in about
     that much time at the measured cost per row, in whole tiles (worker/chunking.py):
     on a CPU a 512-token chunk takes seconds, and every stream waits for it.
Logits are requested only where a token must be sampled (a decode, or the last chunk of a
prompt). Sampling, detokenization and stop strings then run per sequence, and the step's
outcome is one StepResult for all of them. With speculative decoding on, a decoding
sequence may add draft tokens after its pending one, with logits at each, in the room the
prompt chunks left (worker/speculative.py: which, how many, and why that changes no
output).
"""

from __future__ import annotations

import logging
import time

import llama_cpp as L

from ..config import SpeculativeConfig
from ..messages import Admit, SeqOutput, StepResult
from ..rate import DecayingRate
from .chunking import CHUNK_ROWS, SMALL_CHUNK, prompt_rows
from .constraint import Constraint, GrammarError
from .llama import Context, Model
from .logprobs import log_softmax, token_logprob
from .output import TextOutput
from .sampling import Sampler
from .sequence import ImageRows, Sequence
from .slot_cells import export_cells, reused, set_up_cells
from .speculation import Speculation

log = logging.getLogger("inferflux.worker")


class Engine:
    def __init__(
        self,
        model: Model,
        context: Context,
        speculative: SpeculativeConfig | None = None,
        max_step_s: float = 0.0,
    ) -> None:
        self.model = model
        self.context = context
        self.max_step_s = max_step_s
        # Seconds per batch row over recent steps of at least a tile (the step-time cut).
        self.row_cost = DecayingRate(decay=0.8)
        self.sequences: dict[int, Sequence] = {}
        self._finished: list[SeqOutput] = []
        self.steps = 0
        self.spec: Speculation | None = None
        # An exported sequence's KV fits another worker only with the same model, the
        # same per-slot stream layout and KV type, and the same state format (the same
        # llama.cpp build): llama.cpp checks the cells; this, the rest.
        self.fingerprint = (
            f"{model.fingerprint()}; {context.cells_per_slot} cells per slot, f16; "
            f"state of llama-cpp-python {L.__version__}"
        )
        if speculative is not None and speculative.enabled:
            self.spec = Speculation(speculative, context)

    @property
    def idle(self) -> bool:
        return not self.sequences and not self._finished

    # control -------------------------------------------------------------------------
    def admit(self, admit: Admit, images: list[ImageRows] | None = None) -> None:
        """`images`: the embeddings of the prompt's images (the worker encoded them off
        the step loop); those past the reused prefix are decoded before text follows."""
        if self.reserve(admit):
            self.start(admit, images)

    def reserve(self, admit: Admit) -> bool:
        """Set up the slot's cells now, in message order (worker/slot_cells.py), even when
        the sequence starts later. False when it cannot start here: its KV state from a
        prefill node did not load; it ends "preempted", and the scheduler re-admits it to
        prefill here."""
        if admit.seq_id in self.sequences:
            raise ValueError(f"sequence {admit.seq_id} is already running")
        why = set_up_cells(self.context, admit, self.fingerprint)
        if why:
            log.warning("sequence %d: the prefilled KV state is refused (%s)", admit.seq_id, why)
            self._finished.append(SeqOutput(admit.seq_id, [], "", "preempted"))
        return not why

    def start(self, admit: Admit, images: list[ImageRows] | None = None) -> None:
        """Start generating in the slot `reserve` prepared for this Admit."""
        if admit.seq_id in self.sequences:
            raise ValueError(f"sequence {admit.seq_id} is already running")
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
        n_past = reused(admit)
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
            fast_greedy=sampler.plain_greedy and constraint is None and admit.sampling.logprobs < 0,
            images=sorted(images or [], key=lambda image: image.start),
            export_to=admit.export_to,
        )
        self.sequences[admit.seq_id] = seq
        if self.spec is not None:
            self.spec.add(admit.seq_id, admit.tokens)
        if replayed[admit.text_sent :]:
            seq.new_text.append(replayed[admit.text_sent :])

    def fail(self, seq_id: int, error: str) -> None:
        """End a sequence that could not start (its image did not encode)."""
        log.error("sequence %d: %s", seq_id, error)
        self._finished.append(SeqOutput(seq_id, [], "", "error", error=error))

    def cancel(self, seq_id: int) -> None:
        seq = self.sequences.get(seq_id)
        if seq is not None:
            self._finish(seq, "cancelled")

    # the step ------------------------------------------------------------------------
    def step(self) -> StepResult:
        start = time.perf_counter()
        n_image_rows = self._decode_images()
        n_tokens, batch_seqs = self._fill_batch()
        n_drafted = n_accepted = 0
        if n_tokens:
            code = self.context.decode(n_tokens)
            if code != 0:
                self._on_decode_failure(code, batch_seqs)
            else:
                self._pick_greedy(batch_seqs)
                for seq in batch_seqs:
                    if seq.prompt_done_this_step:
                        seq.n_past += seq.prompt_done_this_step
                        if seq.logit_index >= 0:
                            self._emit(seq, self._sample_row(seq, seq.logit_index))
                    elif seq.draft:
                        n_drafted += len(seq.draft)
                        n_accepted += self._verify(seq)
                    else:
                        seq.n_past += 1
                        token = self._sample_row(seq, seq.logit_index)
                        if self.spec is not None:
                            self.spec.score_shadow(seq.seq_id, token)
                        self._emit(seq, token)
                    seq.logit_index = -1
                    seq.picks = None
        outputs = self._finished
        self._finished = []
        for seq in self.sequences.values():
            if seq.new_tokens or seq.prompt_done_this_step or seq.image_rows_this_step:
                outputs.append(
                    SeqOutput(
                        seq.seq_id,
                        seq.new_tokens,
                        "".join(seq.new_text),
                        None,
                        seq.prompt_done_this_step + seq.image_rows_this_step,
                        seq.n_past,
                        seq.new_logprobs,
                    )
                )
                seq.new_tokens, seq.new_text, seq.new_logprobs = [], [], []
            seq.prompt_done_this_step = seq.image_rows_this_step = 0
        self.steps += 1
        duration = time.perf_counter() - start
        if n_tokens >= CHUNK_ROWS:  # smaller steps are overhead, not rows
            self.row_cost.observe(n_tokens, duration)
        if self.spec is not None and n_tokens:
            self.spec.observe_step(duration)
        return StepResult(
            self.steps,
            len(batch_seqs),
            n_tokens + n_image_rows,
            duration,
            outputs,
            n_drafted,
            n_accepted,
        )

    def _decode_images(self) -> int:
        """Decode the image rows every prefilling sequence has reached, each image chunk
        in llama_decode calls of its own (embeddings cannot share the token batch), so
        its text after the image can join this step's batch. Returns the rows decoded."""
        total = 0
        for seq in list(self.sequences.values()):
            while seq.prefilling and (image := seq.image_at(seq.n_past)) is not None:
                first = seq.n_past - image.start  # a prefix hit may end inside an image
                rows = image.rows[first : first + self.context.n_batch]
                code = self.context.decode_embeddings(rows, seq.n_past, seq.slot)
                if code != 0:
                    self.context.seq_rm(seq.slot, seq.n_past)
                    self._finish(seq, "error", f"llama_decode of image rows failed ({code})")
                    break
                seq.n_past += len(rows)
                seq.image_rows_this_step += len(rows)
                total += len(rows)
        return total

    def _fill_batch(self) -> tuple[int, list[Sequence]]:
        """Choose this step's tokens (decodes first, then prompt chunks, then drafts, within
        the budget), then lay them out in slot order: llama.cpp splits a batch over per-slot
        KV streams into ubatches of consecutive slots, so slot order keeps a step at one
        ubatch plus one per multi-token chunk (or draft)."""
        capacity = self.context.n_batch
        planned: list[tuple[Sequence, int]] = []  # (sequence, prompt tokens this step)
        room = capacity
        decoding = []
        for seq in self.sequences.values():
            if not seq.prefilling and room > 0:
                planned.append((seq, 1))
                decoding.append(seq)
                room -= 1
        prompt_room = prompt_rows(room, len(decoding), self.max_step_s, self.row_cost.seconds_each)
        for seq in self.sequences.values():
            if seq.prefilling and room > 0 and prompt_room > 0:
                if seq.n_past < seq.n_prompt:  # the prompt; replayed tokens start a new chunk
                    left = seq.n_prompt - seq.n_past
                    n = min(room, prompt_room, left)
                    if n == left and n > 1 and seq.n_prompt > SMALL_CHUNK:
                        n -= 1  # the last token goes alone, next step
                    n = min(n, seq.text_end(seq.n_past) - seq.n_past)  # images: own decodes
                    if n <= 0:
                        continue
                else:
                    n = min(room, SMALL_CHUNK, len(seq.tokens) - seq.n_past)
                planned.append((seq, n))
                room -= n
                prompt_room -= n
        if self.spec is not None and decoding:
            self.spec.draft(decoding, planned, room, self.context.cells_per_slot)
        # Python lists, then one slice assignment per batch array (Context.fill): per-row
        # ctypes writes cost ~0.3 ms a step at 128 sequences.
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits: list[int] = []
        n_outputs = 0
        for seq, n in sorted(planned, key=lambda p: p[0].slot):
            if not seq.prefilling:
                rows = 1 + len(seq.draft)
                seq.logit_index = len(tokens)
                seq.output_index = n_outputs
                tokens.append(seq.next_token)
                tokens += seq.draft
                positions += range(seq.n_past, seq.n_past + rows)
                slots += [seq.slot] * rows
                logits += [1] * rows
                n_outputs += rows
                seq.prompt_done_this_step = 0
                continue
            completes = seq.n_past + n == len(seq.tokens)
            tokens += seq.tokens[seq.n_past : seq.n_past + n]
            positions += range(seq.n_past, seq.n_past + n)
            slots += [seq.slot] * n
            logits += [0] * n
            seq.logit_index = -1
            if completes:
                logits[-1] = 1
                seq.logit_index = len(tokens) - 1
                seq.output_index = n_outputs
                n_outputs += 1
            seq.prompt_done_this_step = n
        self._n_outputs = n_outputs
        i = self.context.fill(tokens, positions, slots, logits)
        return i, [seq for seq, _ in planned]

    def _pick_greedy(self, batch_seqs: list[Sequence]) -> None:
        """Plain greedy sequences (no penalties, bias, grammar or logprobs) take the argmax
        of their rows all at once, in numpy, instead of one sampler-chain call per row
        (each copies the whole vocabulary into a candidate array: ~0.1 ms a row here,
        which at 128 sequences on a GPU would outlast the decode itself). Same token: the
        greedy sampler also takes the first maximum."""
        fast = [seq for seq in batch_seqs if seq.logit_index >= 0 and seq.fast_greedy]
        if not fast:
            return
        rows: list[int] = []
        for seq in fast:
            rows += range(seq.output_index, seq.output_index + 1 + len(seq.draft))
        logits = self.context.output_logits(self._n_outputs)
        if 2 * len(rows) >= self._n_outputs:  # most rows: no copy of them (25 MB at 128)
            picks = logits.argmax(axis=1)[rows].tolist()
        else:
            picks = logits[rows].argmax(axis=1).tolist()
        start = 0
        for seq in fast:
            end = start + 1 + len(seq.draft)
            seq.picks = picks[start:end]
            start = end

    def _verify(self, seq: Sequence) -> int:
        """Sample the rows of a drafted sequence in order (speculative.verify); keep the KV
        of the accepted draft tokens, drop the rest. Returns how many were accepted."""
        draft, base, first = seq.draft, seq.n_past, seq.logit_index
        seq.draft = []

        def sample(j: int) -> int:
            seq.n_past = base + 1 + j  # rows 0..j are real tokens now
            return self._sample_row(seq, first + j)

        accepted = self.spec.verify(seq.seq_id, draft, sample, lambda t: self._emit(seq, t))
        self.context.seq_rm(seq.slot, seq.n_past)  # the rejected drafts' cells
        return accepted

    def _sample_row(self, seq: Sequence, index: int) -> int:
        """Sample the sequence's next token from the logits at batch row `index` (and keep
        its logprob for _emit when asked for)."""
        if seq.picks is not None:
            return seq.picks[index - seq.logit_index]
        seq.pending_logprob = None
        if seq.logprobs >= 0 or seq.constraint is not None:  # most sequences need neither
            logits = L.llama_get_logits_ith(self.context.ptr, index)
            # Logprobs are the model's own distribution, read before any grammar mask.
            if seq.logprobs >= 0:
                seq.pending_logprob = log_softmax(logits, self.model.info.n_vocab)
            if seq.constraint is not None:
                seq.constraint.apply(logits)
        return seq.sampler.sample(self.context.ptr, index)

    def _emit(self, seq: Sequence, token: int) -> bool:
        """A sampled token joins the output (or ends the sequence). False: finished."""
        if self.model.is_eog(token) and not seq.ignore_eos:
            self._finish(seq, "stop")
            return False
        seq.n_generated += 1
        seq.new_tokens.append(token)
        seq.new_text.append(seq.output.feed(self.model.piece(token)))
        if seq.pending_logprob is not None:
            seq.new_logprobs.append(token_logprob(seq.pending_logprob, token, seq.logprobs))
        if seq.constraint is not None:
            seq.constraint.consume(token)
            if seq.constraint.failed:  # a runtime limit of the grammar engine: say so
                self._finish(seq, "error", f"constrained decoding failed: {seq.constraint.failed}")
                return False
        if seq.output.stopped or (seq.constraint is not None and seq.constraint.complete):
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.max_tokens:
            self._finish(seq, "length")
        elif seq.n_past + 1 >= self.context.cells_per_slot:
            # Its slot's stream is full: a safety net, admission caps prompt + max_tokens.
            self._finish(seq, "length")
        else:
            seq.next_token = token
            if self.spec is not None:
                self.spec.extend(seq.seq_id, token)
            return True
        return False

    def _finish(self, seq: Sequence, reason: str, error: str = "") -> None:
        kv_state = None
        if reason in ("stop", "length"):
            seq.new_text.append(seq.output.flush())
            if seq.export_to:  # a prefill job: its prompt's KV (the new token is not in it)
                kv_state = export_cells(
                    self.context, seq.slot, seq.export_to, self.fingerprint, seq.n_past
                )
        self._finished.append(
            SeqOutput(
                seq.seq_id,
                seq.new_tokens,
                "".join(seq.new_text),
                reason,
                seq.prompt_done_this_step + seq.image_rows_this_step,
                seq.n_past,
                seq.new_logprobs,
                error,
                kv_state,
            )
        )
        seq.sampler.close()
        del self.sequences[seq.seq_id]
        if self.spec is not None:
            self.spec.remove(seq.seq_id)

    def _on_decode_failure(self, code: int, batch_seqs: list[Sequence]) -> None:
        """KV cache full (code 1): preempt the newest sequence in the batch; the scheduler
        re-admits it by recompute once cells free up. Other codes are fatal for the step."""
        if code != 1 or not batch_seqs:
            raise RuntimeError(f"llama_decode failed with code {code}")
        victim = max(batch_seqs, key=lambda s: s.seq_id)
        for seq in batch_seqs:
            seq.prompt_done_this_step = 0
            seq.logit_index = -1
            seq.draft = []
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
            if self.spec is not None:
                self.spec.remove(seq.seq_id)
        self.sequences.clear()
