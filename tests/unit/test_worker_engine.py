"""The worker's engine on the real model, without actors: where a sequence must stop."""

from __future__ import annotations

import pytest

from inferflux.messages import Admit, SamplingParams
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Context, Model

pytestmark = pytest.mark.model


def test_a_sequence_ends_when_its_slot_is_full_not_the_whole_context(model_path: str) -> None:
    # Two slots of 256 cells (llama.cpp's smallest stream): n_ctx is 512, but one sequence
    # can only ever hold 256.
    model = Model(model_path)
    context = Context(model, n_ctx=2 * 256, n_seq_max=2, n_batch=256, n_threads=1)
    engine = Engine(model, context)
    try:
        assert context.n_ctx == 512 and context.cells_per_slot == 256
        # A long prompt: few steps of prefill, then only ~50 decode steps to the end.
        prompt = model.tokenize("Once upon a time " * 50, add_special=True)
        assert 150 < len(prompt) < 240
        # No cap from the scheduler here (it would refuse prompt + max_tokens > 256).
        sampling = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
        engine.admit(Admit(seq_id=1, slot=1, tokens=prompt, sampling=sampling))
        outputs = []
        for _ in range(400):
            outputs += engine.step().outputs
            if engine.idle:
                break
        last = outputs[-1]
        assert last.finish_reason == "length"  # not "preempted" (the decode failing)
        assert last.kv_tokens == context.cells_per_slot - 1
        generated = sum(len(out.token_ids) for out in outputs)
        assert generated == context.cells_per_slot - len(prompt)
    finally:
        engine.close()
        context.close()
        model.close()
