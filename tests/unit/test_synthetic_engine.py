"""tools/bench_ingress.py's synthetic engine (tools/benchkit/synthetic.py) drives the real
Engine: a greedy sequence gets its fixed token each step, one step per decode, and ends
at max_tokens. If Engine starts using more of its context than the stand-in has, this
fails here rather than in a benchmark run."""

from __future__ import annotations

import os
import sys

from inferflux.messages import Admit, SamplingParams
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

from benchkit.synthetic import SyntheticContext  # noqa: E402


def test_a_greedy_sequence_gets_the_fixed_token_each_step_until_max_tokens(
    model_path: str,
) -> None:
    model = Model(model_path, vocab_only=True)
    try:
        engine = Engine(model, SyntheticContext(model, 4 * 64, 4, 64, step_s=0.001), None)
        prompt = model.tokenize("Hello there, how are you?", add_special=True)
        sampling = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
        engine.admit(Admit(seq_id=1, slot=0, tokens=prompt, sampling=sampling))
        outputs = []
        while not engine.idle:
            outputs += engine.step().outputs
        tokens = [t for out in outputs for t in out.token_ids]
        assert tokens == model.tokenize(" the", add_special=False)[:1] * 5
        assert "".join(out.text for out in outputs) == " the" * 5
        assert outputs[-1].finish_reason == "length"
        engine.close()
    finally:
        model.close()
