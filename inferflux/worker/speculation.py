"""The engine's side of speculative decoding: one object that drafts for the step being
built, verifies drafted sequences after the decode, and keeps the planner's numbers.

Everything here is rebuilt from what an Admit carries (the drafter indexes the admitted
tokens; acceptance starts from the prior), so a recomputed sequence after a worker crash
drafts again from its own text, and its output does not depend on it (speculative.py).
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Tokens

from ..config import SpeculativeConfig
from .drafting import Drafter, NgramDrafter
from .llama import Context
from .sequence import Sequence
from .speculative import Candidate, Planner, calibrate, count_ubatches, verify


class Speculation:
    def __init__(self, config: SpeculativeConfig, context: Context) -> None:
        self.drafter: Drafter = NgramDrafter(config.ngram_min, config.ngram_max)
        self.max_draft_tokens = config.max_draft_tokens
        self.context = context
        self.planner = Planner(calibrate(self._calibration_decode), config.adaptive)
        # seq_id -> (first token, kind) of a draft it did not verify: scored for free
        self._shadow: dict[int, tuple[int, str]] = {}
        self._kinds: dict[int, str] = {}  # seq_id -> kind of the draft it verifies now
        # (ubatches, rows) of the step built, without and with its drafts
        self._shape: tuple[tuple[int, int], tuple[int, int]] | None = None

    # the sequences' lives ------------------------------------------------------------
    def add(self, seq_id: int, tokens: Tokens[int]) -> None:
        self.drafter.add(seq_id, tokens)

    def extend(self, seq_id: int, token: int) -> None:
        self.drafter.extend(seq_id, (token,))

    def remove(self, seq_id: int) -> None:
        self.drafter.remove(seq_id)
        self.planner.forget(seq_id)
        self._shadow.pop(seq_id, None)
        self._kinds.pop(seq_id, None)

    # a step --------------------------------------------------------------------------
    def draft(
        self, decoding: list[Sequence], planned: list[tuple[Sequence, int]], room: int, cells: int
    ) -> None:
        """Give some decoding sequences a draft (seq.draft) for this step, within `room`."""
        wants = {}
        for seq in decoding:
            # Drafts never run past max_tokens or the slot's stream.
            k = min(
                self.max_draft_tokens,
                seq.max_tokens - seq.n_generated - 1,
                cells - 2 - seq.n_past,
            )
            if k > 0:
                wants[seq.seq_id] = k
        proposals = self.drafter.propose(wants) if wants and room > 0 else {}
        rows_by_slot = [0] * self.context.n_seq_max
        for seq, n in planned:
            rows_by_slot[seq.slot] = n
        candidates = []
        by_id = {}
        for seq in decoding:
            draft = proposals.get(seq.seq_id)
            if draft is None:
                continue
            tokens = draft.tokens
            if seq.constraint is not None:  # only what the grammar allows
                tokens = tokens[: seq.constraint.matcher.validate_tokens(tokens)]
            if tokens:
                by_id[seq.seq_id] = (seq, tokens, draft.kind)
                acceptance = self.planner.acceptance(seq.seq_id, draft.kind)
                candidates.append(Candidate(seq.seq_id, seq.slot, acceptance, len(tokens)))
        base = (count_ubatches(rows_by_slot), sum(rows_by_slot))
        plan = {}
        if candidates:
            plan = self.planner.plan(candidates, len(decoding), rows_by_slot, room)
        for seq_id, (seq, tokens, kind) in by_id.items():
            k = plan.get(seq_id, 0)
            if k:
                seq.draft = tokens[:k]
                self._kinds[seq_id] = kind
                rows_by_slot[seq.slot] += k
            else:
                self._shadow[seq_id] = (tokens[0], kind)
        self._shape = (base, (count_ubatches(rows_by_slot), sum(rows_by_slot)))

    def verify(
        self,
        seq_id: int,
        draft: list[int],
        sample: Callable[[int], int],
        emit: Callable[[int], bool],
    ) -> int:
        kind = self._kinds.pop(seq_id)  # before: a sequence that finishes is removed
        accepted, _ = verify(draft, sample, emit)
        self.planner.record(seq_id, kind, accepted, 1 if accepted < len(draft) else 0)
        return accepted

    def score_shadow(self, seq_id: int, token: int) -> None:
        """A sequence that did not draft: would its draft's first token have been right?"""
        guess = self._shadow.pop(seq_id, None)
        if guess is not None:
            first, kind = guess
            self.planner.record(seq_id, kind, int(token == first), int(token != first))

    def observe_step(self, seconds: float) -> None:
        if self._shape is not None:
            base, (ubatches, rows) = self._shape
            self.planner.cost.observe(base, ubatches, rows, seconds)
            self._shape = None

    # calibration ---------------------------------------------------------------------
    def _calibration_decode(self, shape: list[tuple[int, int]]) -> None:
        """Decode throw-away rows (slot, count), logits at each like draft rows, then
        drop them. Runs at start, before any sequence is admitted."""
        ctx = self.context
        shape = [(slot, n) for slot, n in shape if slot < ctx.n_seq_max]
        tokens, positions, slots = [], [], []
        for slot, n in shape:
            tokens += [0] * n
            positions += range(n)
            slots += [slot] * n
        ctx.decode(ctx.fill(tokens, positions, slots, [1] * len(tokens)))
        for slot, _ in shape:
            ctx.seq_rm(slot, 0)
