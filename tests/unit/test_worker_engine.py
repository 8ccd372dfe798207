"""The worker's engine on the real model, without actors: where a sequence must stop, how
a prompt is chunked, and speculative decoding changing no output."""

from __future__ import annotations

import json
from dataclasses import dataclass

import llguidance
import pytest

from inferflux.config import SpeculativeConfig
from inferflux.messages import Admit, SamplingParams
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Context, Model
from inferflux.worker.speculative import StepCost

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


# -- prompt chunking ---------------------------------------------------------------------


def test_a_long_prompt_gives_the_same_first_token_cold_and_from_the_prefix_cache(
    model_path: str,
) -> None:
    """716 prompt tokens (past the 256 cells where a lone row takes llama.cpp's split-KV
    attention): prefilled cold, the first token's logprobs equal those of the same prompt
    whose KV came from the cache but for its last token."""
    model = Model(model_path)
    context = Context(model, n_ctx=2048, n_seq_max=1, n_batch=512, n_threads=2)
    engine = Engine(model, context)
    try:
        text = " ".join(
            f"Policy {i}: answer with the warranty terms of line {i}." for i in range(60)
        )
        prompt = model.tokenize(text, add_special=True)[:716]
        assert len(prompt) == 716
        sampling = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
        cold = run_to_end(engine, [Admit(seq_id=1, slot=0, tokens=prompt, sampling=sampling)])
        cached = run_to_end(
            engine, [Admit(seq_id=2, slot=0, tokens=prompt, sampling=sampling, n_cached=716)]
        )
        assert cold.logprobs[1] == cached.logprobs[2]  # bit for bit
    finally:
        engine.close()
        context.close()
        model.close()


# -- speculative decoding ------------------------------------------------------------------


@dataclass
class Run:
    tokens: dict[int, list[int]]
    logprobs: dict[int, list]
    drafted: int
    accepted: int


def run_to_end(engine: Engine, admits: list[Admit], steps: int = 2000) -> Run:
    for admit in admits:
        engine.admit(admit)
    run = Run({a.seq_id: [] for a in admits}, {a.seq_id: [] for a in admits}, 0, 0)
    for _ in range(steps):
        result = engine.step()
        run.drafted += result.n_drafted
        run.accepted += result.n_accepted
        for out in result.outputs:
            run.tokens[out.seq_id] += out.token_ids
            run.logprobs[out.seq_id] += out.logprobs
        if engine.idle:
            return run
    raise AssertionError("did not finish")


# Prompts whose answers repeat a lot of the prompt (prompt lookup drafts from them), and
# one that does not. Prompt + answer stay under 256 cells: past that a sequence decoding
# alone takes llama.cpp's split-KV attention kernel, which rounds differently from a
# multi-row chunk (docs/architecture.md), with or without speculation.
COPY = (
    "<|im_start|>user\nRepeat this list exactly.\n"
    + "".join(f"{i}. {w}\n" for i, w in enumerate("apple banana cherry plum pear fig".split()))
    + "<|im_end|>\n<|im_start|>assistant\n"
)
CODE = (
    "def area(width, height):\n    return width * height\n\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\n\n"
    "def area("
)
FREE = "<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(model_path: str):  # noqa: ANN201
    loaded = Model(model_path)
    yield loaded
    loaded.close()


def engine_for(model: Model, speculative: SpeculativeConfig | None, slots: int = 4) -> Engine:
    context = Context(model, n_ctx=slots * 256, n_seq_max=slots, n_batch=256, n_threads=2)
    return Engine(model, context, speculative)


def compare(model: Model, admits: list[Admit], config: SpeculativeConfig) -> tuple[Run, Run]:
    plain = engine_for(model, None)
    spec = engine_for(model, config)
    try:
        return run_to_end(plain, admits), run_to_end(spec, admits)
    finally:
        for engine in (plain, spec):
            engine.close()
            engine.context.close()


ALWAYS = SpeculativeConfig(enabled=True, adaptive=False, ngram_min=2, max_draft_tokens=6)


def admit(model: Model, seq_id: int, text: str, **sampling) -> Admit:  # noqa: ANN003
    params = SamplingParams(**{"max_tokens": 60, "temperature": 0.0, **sampling})
    tokens = model.tokenize(text, add_special=False)
    return Admit(seq_id=seq_id, slot=seq_id, tokens=tokens, sampling=params)


def test_speculation_changes_no_greedy_token(model: Model) -> None:
    admits = [admit(model, 0, COPY), admit(model, 1, CODE), admit(model, 2, FREE)]
    plain, spec = compare(model, admits, ALWAYS)
    assert spec.tokens == plain.tokens
    assert spec.drafted > 20 and spec.accepted > 10  # it did draft, and it paid
    one, spec_one = compare(model, admits[1:2], ALWAYS)  # alone: one ubatch per step
    assert spec_one.tokens == one.tokens and spec_one.accepted > 10


def test_speculation_changes_no_seeded_sample_and_keeps_logprobs(model: Model) -> None:
    """Sampling rows in order and accepting while the draw equals the draft is standard
    speculative sampling for a point draft, with one draw per token: a seed gives the
    same text as without speculation."""
    admits = [
        admit(model, 0, COPY, temperature=0.8, seed=11, logprobs=2),
        admit(model, 1, CODE, temperature=1.0, seed=5, top_p=0.9, presence_penalty=0.3),
    ]
    plain, spec = compare(model, admits, ALWAYS)
    assert spec.tokens == plain.tokens and spec.logprobs == plain.logprobs
    assert spec.accepted > 5


def test_speculation_under_a_json_schema_changes_no_token(model: Model) -> None:
    schema = (
        '{"type": "object", "properties": {"fruits": {"type": "array", "maxItems": 6, '
        '"items": {"type": "string"}}}, "required": ["fruits"], "additionalProperties": false}'
    )
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema)
    text = COPY.replace("Repeat this list exactly.", "List these fruits as JSON.")
    admits = [admit(model, 0, text, grammar=grammar), admit(model, 1, text, grammar=grammar)]
    plain, spec = compare(model, admits, ALWAYS)
    assert spec.tokens == plain.tokens
    assert json.loads(model.detokenize(spec.tokens[0]))["fruits"]
    assert spec.accepted > 5


def test_a_recomputed_sequence_continues_exactly_with_speculation(model: Model) -> None:
    """After a worker crash the scheduler re-admits prompt + the tokens already sent; the
    drafter re-indexes them and the output goes on as if nothing happened."""
    first = admit(model, 0, CODE, max_tokens=80)
    plain, _ = compare(model, [first], ALWAYS)
    sent = plain.tokens[0][:23]
    again = Admit(
        seq_id=0,
        slot=0,
        tokens=first.tokens + sent,
        sampling=first.sampling,
        n_generated=len(sent),
        text_sent=len(model.detokenize(sent)),
    )
    engine = engine_for(model, ALWAYS)
    try:
        resumed = run_to_end(engine, [again])
    finally:
        engine.close()
        engine.context.close()
    assert sent + resumed.tokens[0] == plain.tokens[0]
    assert resumed.accepted > 5


def test_adaptive_speculation_drafts_a_lone_copy_and_keeps_the_output(model: Model) -> None:
    plain = engine_for(model, None)
    spec = engine_for(model, SpeculativeConfig(enabled=True))
    # The cost this was built on (2-core CPU), not what a calibration on a busy machine
    # measures: which steps draft must not depend on the load.
    assert spec.spec is not None
    spec.spec.planner.cost = StepCost(per_ubatch=0.0025, per_row=0.0052)
    admits = [admit(model, 0, CODE, max_tokens=120)]
    try:
        expected, drafted = run_to_end(plain, admits), run_to_end(spec, admits)
    finally:
        for engine in (plain, spec):
            engine.close()
            engine.context.close()
    assert drafted.tokens == expected.tokens
    assert drafted.drafted > 0 and drafted.accepted > 0


def test_plain_greedy_argmax_picks_what_the_sampler_chain_picks(model: Model) -> None:
    """Plain greedy rows are sampled by one numpy argmax over the step's logits; a zero
    logit bias sends the same request through llama.cpp's sampler chain instead."""
    fast = [admit(model, i, text) for i, text in enumerate((COPY, CODE, FREE))]
    chain = [
        admit(model, i, text, logit_bias=((0, 0.0),)) for i, text in enumerate((COPY, CODE, FREE))
    ]
    engine = engine_for(model, ALWAYS)
    try:
        engine.admit(fast[0])
        assert engine.sequences[0].fast_greedy
        engine.reset()
        by_argmax = run_to_end(engine, fast)
        engine.reset()
        by_chain = run_to_end(engine, chain)
    finally:
        engine.close()
        engine.context.close()
    assert by_argmax.tokens == by_chain.tokens
    assert by_argmax.accepted > 10  # draft rows were picked too


def test_prompt_chunks_beside_decodes_are_cut_to_the_step_time(model: Model) -> None:
    """With max_step_s set, a long prompt arriving while another sequence decodes is
    prefilled in whole 64-row tiles that fit the time at the measured cost per row (here
    the smallest: one tile), not in step_tokens chunks; alone it takes full chunks."""
    context = Context(model, n_ctx=2 * 1024, n_seq_max=2, n_batch=512, n_threads=2)
    engine = Engine(model, context, max_step_s=0.001)
    try:
        long_prompt = model.tokenize("Once upon a time " * 150, add_special=True)  # 601
        greedy = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
        engine.admit(Admit(1, 0, long_prompt, greedy))  # alone: full chunks
        first = [o.n_prompt_computed for o in engine.step().outputs if o.seq_id == 1]
        assert first == [512] and engine.row_cost.seconds_each > 0
        while any(s.prefilling for s in engine.sequences.values()):
            engine.step()
        engine.admit(Admit(2, 1, long_prompt, greedy))  # beside a decoding sequence
        chunks = []
        while engine.sequences[2].prefilling:
            chunks += [o.n_prompt_computed for o in engine.step().outputs if o.seq_id == 2]
        assert chunks[:-2] == [64] * (len(chunks) - 2) and sum(chunks) == len(long_prompt)
    finally:
        engine.close()
        context.close()
