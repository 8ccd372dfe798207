"""The KV handoff of disaggregated prefill (issue 14) in the engine, on the real model: a
prefill engine computes a prompt, samples the first token and exports the sequence's KV; a
decode engine (another llama.cpp context) loads it and decodes on from that token. The
text equals what one engine gives alone, greedy and seeded; a state that does not fit is
refused and the sequence ends "preempted" (the scheduler then prefills it locally).
The state travels as a staging file (kvcache/staging.py): llama.cpp writes it into the
file's mapping and reads it from one."""

from __future__ import annotations

import os
from collections.abc import Iterator

import msgspec
import pytest

from inferflux.kvcache import staging
from inferflux.messages import Admit, SamplingParams, SeqOutput
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Context, Model

pytestmark = pytest.mark.model

PROMPT = "<|im_start|>user\nDescribe a castle at night.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(model_path: str) -> Iterator[Model]:
    model = Model(model_path)
    yield model
    model.close()


def make_engine(model: Model) -> Engine:
    context = Context(model, n_ctx=2 * 256, n_seq_max=2, n_batch=256, n_threads=2)
    return Engine(model, context)


def close(engine: Engine) -> None:
    engine.close()
    engine.context.close()


def run(engine: Engine, admit: Admit) -> list[SeqOutput]:
    engine.admit(admit)
    outputs: list[SeqOutput] = []
    for _ in range(500):
        outputs += [out for out in engine.step().outputs if out.seq_id == admit.seq_id]
        if engine.idle:
            return outputs
    raise AssertionError("did not finish")


def tokens_and_text(outputs: list[SeqOutput]) -> tuple[list[int], str]:
    return [t for out in outputs for t in out.token_ids], "".join(out.text for out in outputs)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_tokens=40, temperature=0.0),
        SamplingParams(max_tokens=40, temperature=0.9, seed=1234),
    ],
    ids=["greedy", "seeded"],
)
def test_decoding_on_from_an_exported_prefill_equals_one_engine(
    model: Model, sampling: SamplingParams
) -> None:
    prompt = model.tokenize(PROMPT, add_special=True)
    prefill, decode, alone = make_engine(model), make_engine(model), make_engine(model)
    state = None
    try:
        expected = tokens_and_text(run(alone, Admit(1, 0, prompt, sampling)))
        first = msgspec.structs.replace(sampling, max_tokens=1)
        prefilled = run(prefill, Admit(2, 1, prompt, first, export_to=staging.new_name()))
        state = prefilled[-1].kv_state
        assert state is not None and state.n_tokens == len(prompt)
        assert os.path.getsize(staging.path(state.name)) == state.size > 100_000
        assert state.fingerprint == decode.fingerprint
        [token] = tokens_and_text(prefilled)[0]
        # Decoding on: the prompt's KV from the state, the first token as if already sent
        # (recompute's path: its text is replayed, its RNG draw skipped).
        handed = Admit(
            3, 1, prompt + [token], sampling, len(prompt), n_generated=1, kv_state=state
        )  # fmt: skip
        tokens, text = tokens_and_text(run(decode, handed))
        assert ([token] + tokens, text) == expected
        assert len(tokens) == sampling.max_tokens - 1
    finally:
        for engine in (prefill, decode, alone):
            close(engine)
        if state is not None:
            staging.remove(state.name)


def test_a_state_that_does_not_fit_is_refused_and_the_sequence_preempted(model: Model) -> None:
    prompt = model.tokenize(PROMPT, add_special=True)
    engine = make_engine(model)
    names = [staging.new_name() for _ in range(3)]
    try:
        greedy = SamplingParams(max_tokens=1, temperature=0.0)
        state = run(engine, Admit(1, 0, prompt, greedy, export_to=names[0]))[-1].kv_state
        assert state is not None
        with open(staging.path(state.name), "rb") as exported:
            cut_short = exported.read(100)
        with open(staging.path(names[1]), "wb") as short:
            short.write(cut_short)
        resume = SamplingParams(max_tokens=8, temperature=0.0)
        cases = {
            "another model": msgspec.structs.replace(state, fingerprint="another model"),
            "cut short": msgspec.structs.replace(state, name=names[1], size=100),
            "fewer tokens": msgspec.structs.replace(state, n_tokens=state.n_tokens - 3),
            "gone": msgspec.structs.replace(state, name=names[2]),
        }
        tokens = prompt + [42]
        for seq_id, bad in enumerate(cases.values(), start=10):
            admit = Admit(seq_id, 1, tokens, resume, len(prompt), n_generated=1, kv_state=bad)
            assert [(o.finish_reason, o.token_ids) for o in run(engine, admit)] == [
                ("preempted", [])
            ]
            assert engine.context.seq_pos_max(1) == -1  # nothing of it left in the slot
        # The engine goes on: the good state still works in the same slot.
        good = Admit(20, 1, tokens, resume, len(prompt), n_generated=1, kv_state=state)
        assert run(engine, good)[-1].finish_reason == "length"
    finally:
        close(engine)
        for name in names:
            staging.remove(name)
