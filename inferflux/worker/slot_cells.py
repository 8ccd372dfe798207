"""A slot's KV cells in and out. In: setting them up for an Admit, to what the scheduler's
KV manager believes the slot holds from that Admit on (the reused prefix, copied from
another slot if need be, or a prefill node's exported state), and nothing after it. Out:
a prefill job's cells exported for a decode node (disaggregated prefill, issue 14).

This must run in message order, when the Admit arrives, even when the sequence starts
later (once its grammar is compiled or its images encoded): the manager's next placement
may copy this slot's prefix, or overwrite the slot this one copies from. Deferring the
copy let a later Admit change the source first, and a sequence ran on another prompt's
cells (the soak run of issue 18).
"""

from __future__ import annotations

import logging

from ..kvcache import staging
from ..messages import Admit, KVState
from .llama import Context

log = logging.getLogger("inferflux.worker")


def reused(admit: Admit) -> int:
    """Prompt tokens whose KV the sequence starts with (the last token is always computed:
    it gives the first new token's logits)."""
    return min(admit.n_cached, len(admit.tokens) - 1)


def set_up_cells(context: Context, admit: Admit, fingerprint: str) -> str:
    """Make the slot's cells what the Admit says; "" when done, else why the prefill node's
    state (`admit.kv_state`) was refused (the slot is then left empty)."""
    if admit.kv_state is not None:
        return _restore(context, admit, admit.kv_state, fingerprint)
    if admit.copy_from >= 0:
        # Copy the whole source stream, then cut it back to the shared prefix below:
        # between per-slot streams llama.cpp only copies whole sequences.
        context.seq_rm(admit.slot, 0)
        context.seq_cp(admit.copy_from, admit.slot, -1, -1)
    context.seq_rm(admit.slot, reused(admit))  # anything past what is reused is dropped
    return ""


def _restore(context: Context, admit: Admit, state: KVState, fingerprint: str) -> str:
    context.seq_rm(admit.slot, 0)
    if state.fingerprint != fingerprint:
        why = f"it was computed for {state.fingerprint!r}, this worker is {fingerprint!r}"
    else:
        why = _load(context, admit.slot, state)
    if not why:
        last = context.seq_pos_max(admit.slot)
        if last != state.n_tokens - 1 or state.n_tokens != admit.n_cached:
            why = f"it holds positions 0-{last} for an Admit of {admit.n_cached} cached tokens"
    context.seq_rm(admit.slot, 0 if why else reused(admit))
    return why


def _load(context: Context, slot: int, state: KVState) -> str:
    """Load the state from its staging file (llama.cpp reads the mapping itself); "" when
    done, else why not."""
    try:
        loaded = staging.load(
            state.name, lambda buffer, size: context.load_seq_state(slot, buffer, size)
        )
    except staging.StagingError as exc:
        return str(exc)
    return "" if loaded else "llama.cpp refused it"


def export_cells(
    context: Context, slot: int, name: str, fingerprint: str, n_tokens: int
) -> KVState | None:
    """Write the slot's KV (its `n_tokens` prompt tokens) into the staging file `name`;
    None when there is no room (the decode node then prefills the prompt itself)."""
    try:
        size = staging.write(
            name,
            context.seq_state_size(slot),
            lambda buffer: context.write_seq_state(slot, buffer),
        )
    except staging.StagingError as exc:
        log.warning("slot %d: its KV state is not exported: %s", slot, exc)
        return None
    return KVState(fingerprint, n_tokens, name, size, staging.host_id())
