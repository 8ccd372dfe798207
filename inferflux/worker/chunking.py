"""How big a step's prompt chunks are (the engine's step builder uses these).

Chunk sizes change which ggml kernel runs, and so the rounding and the speed: see
SMALL_CHUNK. With `scheduler.max_step_ms`, chunks beside decoding streams are also cut
to a step time (prompt_rows), in whole tiles.
"""

from __future__ import annotations

# ggml's CPU flash attention rounds the rows of any chunk below 64 rows of one stream the
# way it rounds a decode in company, and switches to a tiled kernel that rounds differently
# at 64 (GGML_FA_TILE_Q). A single row of a single stream (a sequence alone in its
# ubatch) with 512 or more KV cells in view takes a third, split-KV kernel. So:
# - recompute replays the tokens a client already has (decodes the first time) in chunks
#   of at most this many;
# - a prompt of more than this many tokens ends with its last token alone, a chunk of
#   one row: a prefix-cache hit on the same prompt reuses all but that token and decodes
#   it alone too, so its logits (the first token) come from the same kernel either way
#   (same seed, same request, same output), alone or in company, short or long. Until
#   now the last 63 rows went alone: that broke the equality past 256 cells (the cached
#   row took the split-KV kernel; measured, 716-token prompt: max logit difference 0.49)
#   and made a 716-token prompt's prefill 3% slower (one-row kernel for 63 rows: 6.8 ms
#   a row against 4.9 in a tiled chunk). Earlier chunks keep full size (capping them too
#   costs 3x on long-prompt prefill).
SMALL_CHUNK = 63
CHUNK_ROWS = SMALL_CHUNK + 1  # a time-cut chunk is whole tiles of this many rows


def prompt_rows(room: int, n_decoding: int, max_step_s: float, per_row_s: float) -> int:
    """Rows prompt chunks may take in a step: all the room, unless sequences are decoding
    and a time target is set; then what fits in max_step_s beside the decodes, in whole
    CHUNK_ROWS tiles, at least one tile (a prompt always moves on). `per_row_s` is the
    engine's average over steps of at least a tile; a small chunk costs more per row
    (about 2x for 64 rows against 512 on the 2-vCPU AMD test box), so a cut step runs
    over its time (docs/benchmarks.md). Before any step of a tile or more was measured,
    one tile: that step measures the cost (a first 512-row chunk on one CPU thread would
    stall every stream for seconds)."""
    if not (n_decoding and max_step_s):
        return room
    if not per_row_s:
        return min(room, CHUNK_ROWS)
    fits = int(max_step_s / per_row_s) - n_decoding
    return min(room, max(CHUNK_ROWS, fits // CHUNK_ROWS * CHUNK_ROWS))
