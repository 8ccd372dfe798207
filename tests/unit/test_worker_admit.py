"""The device worker's message loop on the real model (in-process, no scheduler): a grammar
compiles in its own task, so other Admits and Cancels never wait behind it (issue 13)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
import trio

from actors import ActorRef, Registry
from inferflux.ingress.structured import schema_grammar
from inferflux.messages import Admit, Attach, Cancel, SamplingParams, StepResult, WorkerReady
from inferflux.worker.actor import DeviceWorker

pytestmark = pytest.mark.model


def fresh_grammar() -> str:
    """A schema nobody compiled yet in this process (the compile cache is per grammar)."""
    tag = secrets.token_hex(4)
    fields = {f"{tag}_{i}": {"type": "string", "maxLength": 30} for i in range(80)}
    return schema_grammar({"type": "object", "properties": fields, "required": list(fields)})


def make_worker(model_path: str) -> tuple[DeviceWorker, ActorRef]:
    """A worker of 3 slots of 256 cells, in-process, and a ref to it."""
    registry = Registry()
    worker = DeviceWorker(
        "w", model_path=model_path, n_slots=3, cells_per_slot=256, step_tokens=256, threads=2,
        in_registry=registry,
    )  # fmt: skip
    return worker, ActorRef("w", registry)


async def test_a_grammar_compiles_without_holding_up_other_messages(model_path: str) -> None:
    worker, ref = make_worker(model_path)
    prompt = [1, 2, 3, 4]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        async with ref.stream(Attach(), buffer=10_000) as results:
            assert isinstance(await anext(results), WorkerReady)
            # Warm up first: a fresh context's first decode allocates its buffers (slow).
            await ref.cast(Admit(9, 0, prompt, SamplingParams(max_tokens=2, temperature=0)))
            async for result in results:
                if any(out.seq_id == 9 and out.finish_reason for out in result.outputs):
                    break
            constrained = SamplingParams(max_tokens=4, temperature=0, grammar=fresh_grammar())
            await ref.cast(Admit(1, 0, prompt, constrained))
            await ref.cast(Admit(2, 1, prompt, SamplingParams(max_tokens=4, temperature=0)))
            await ref.cast(
                Admit(3, 2, prompt, SamplingParams(max_tokens=4, grammar=fresh_grammar()))
            )
            await ref.cast(Cancel(3))  # while its grammar compiles
            seen_while_compiling = False
            finished: dict[int, str] = {}
            with trio.fail_after(60):
                async for result in results:
                    assert isinstance(result, StepResult)
                    for out in result.outputs:
                        if out.seq_id == 2 and out.token_ids and 1 not in worker.engine.sequences:
                            seen_while_compiling = True
                        if out.finish_reason:
                            finished[out.seq_id] = out.finish_reason
                    if len(finished) == 3:
                        break
        assert seen_while_compiling  # seq 2 ran while seq 1's grammar was still compiling
        assert finished == {1: "length", 2: "length", 3: "cancelled"}
        nursery.cancel_scope.cancel()


CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


async def collect(
    results: AsyncIterator[StepResult], seq_ids: set[int], seen: list[set[int]] | None = None
) -> dict[int, list[int]]:
    """Every token of `seq_ids` until each has finished; `seen`: who made progress in
    each step."""
    tokens: dict[int, list[int]] = {seq_id: [] for seq_id in seq_ids}
    done: set[int] = set()
    with trio.fail_after(60):
        async for result in results:
            if seen is not None:
                seen.append({out.seq_id for out in result.outputs if out.token_ids})
            for out in result.outputs:
                if out.seq_id in seq_ids:
                    tokens[out.seq_id] += out.token_ids
                    if out.finish_reason:
                        done.add(out.seq_id)
            if done == seq_ids:
                return tokens
    raise AssertionError("the result stream ended")


async def test_a_deferred_admit_sets_up_its_cells_in_message_order(model_path: str) -> None:
    """The soak failure of issue 18: A (a grammar to compile) copies its prefix from slot 0;
    the KV manager's next placement puts B in slot 0, over A's source, since it plans on A's
    copy being done, and C copies A's prefix from A's slot. B's and C's Admits arrive while
    A's grammar still compiles. A and C must run on their own prompts all the same: each
    gives what it gives alone in a fresh slot."""
    worker, ref = make_worker(model_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        assert worker.engine is not None
        model = worker.engine.model
        castle = model.tokenize(CHAT.format("Describe a castle at night."), add_special=True)
        garden = model.tokenize(CHAT.format("Give advice to a new gardener."), add_special=True)
        common = next(i for i, (a, b) in enumerate(zip(castle, garden, strict=False)) if a != b)
        constrained = SamplingParams(max_tokens=24, temperature=0, grammar=fresh_grammar())
        greedy = SamplingParams(max_tokens=8, temperature=0)
        async with ref.stream(Attach(), buffer=10_000) as results:
            assert isinstance(await anext(results), WorkerReady)
            await ref.cast(Admit(9, 0, castle, SamplingParams(max_tokens=1, temperature=0)))
            await collect(results, {9})  # slot 0 now holds the castle prompt
            await ref.cast(Admit(1, 1, castle, constrained, len(castle) - 1, copy_from=0))
            await ref.cast(Admit(2, 0, garden, greedy, common))
            # And C reuses A's slot, which holds A's prefix from A's Admit on.
            await ref.cast(Admit(4, 2, castle, greedy, len(castle) - 1, copy_from=1))
            steps: list[set[int]] = []
            raced = await collect(results, {1, 2, 4}, steps)
            # The same requests alone, in a slot of their own, nothing reused.
            await ref.cast(Admit(3, 2, castle, constrained))
            alone = await collect(results, {3})
            await ref.cast(Admit(5, 2, castle, greedy))
            alone |= await collect(results, {5})
        # B made tokens before A made any (A's grammar was compiling): the case under test.
        assert steps.index(next(s for s in steps if 1 in s)) > steps.index(
            next(s for s in steps if 2 in s)
        )
        assert model.detokenize(raced[1]) == model.detokenize(alone[3])
        assert raced[1] == alone[3]
        assert raced[4] == alone[5]
        nursery.cancel_scope.cancel()
