"""Prompt chunks cut to a step time (scheduler.max_step_ms; worker/engine.py): the rows a
step's prompt chunks may take, and the per-row cost they are measured with."""

from __future__ import annotations

from inferflux.rate import DecayingRate
from inferflux.worker.chunking import CHUNK_ROWS, prompt_rows


def test_without_decodes_or_a_target_the_room_is_all_and_unmeasured_one_tile() -> None:
    assert prompt_rows(500, 0, 0.5, 0.01) == 500  # nobody waits for the step
    assert prompt_rows(500, 8, 0.0, 0.01) == 500  # off
    assert prompt_rows(500, 8, 0.5, 0.0) == CHUNK_ROWS  # not measured yet: one tile
    assert prompt_rows(40, 8, 0.5, 0.0) == 40


def test_beside_decodes_the_chunk_fits_the_time_in_whole_tiles() -> None:
    # 7 ms a row, 8 decodes: 1.0 s holds 142 rows, 134 for prompts: two tiles.
    assert prompt_rows(504, 8, 1.0, 0.007) == 2 * CHUNK_ROWS
    # Never more than the room, never less than one tile: a prompt always moves on.
    assert prompt_rows(100, 8, 10.0, 0.007) == 100
    assert prompt_rows(504, 8, 0.05, 0.007) == CHUNK_ROWS


def test_the_cost_per_row_follows_recent_steps() -> None:
    cost = DecayingRate(decay=0.8)
    assert cost.seconds_each == 0.0 and cost.per_second == 0.0  # nothing observed yet
    cost.observe(512, 3.584)
    assert abs(cost.seconds_each - 0.007) < 1e-9
    cost.observe(128, 1.28)  # 10 ms a row now: the estimate moves towards it
    assert 0.007 < cost.seconds_each < 0.01
    cost.observe(0, 1.0)  # nothing computed: no information
    assert 0.007 < cost.seconds_each < 0.01
