"""The device worker's message loop on the real model (in-process, no scheduler): a grammar
compiles in its own task, so other Admits and Cancels never wait behind it (issue 13)."""

from __future__ import annotations

import secrets

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


async def test_a_grammar_compiles_without_holding_up_other_messages(model_path: str) -> None:
    registry = Registry()
    worker = DeviceWorker(
        "w", model_path=model_path, n_slots=3, cells_per_slot=256, step_tokens=256, threads=2,
        in_registry=registry,
    )  # fmt: skip
    ref = ActorRef("w", registry)
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
