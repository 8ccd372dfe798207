"""A device worker whose engine does no arithmetic, for measuring the serving path alone.

Every decode takes a fixed time (`INFERFLUX_SYNTHETIC_STEP_MS`, as a GPU step would) and
every row's logits pick the same ordinary token. Everything else is real: the worker's
Engine (batching, sampling, detokenizing, step results), its process and link, the
scheduler, the ingress, HTTP. So it answers what this CPU cannot show with the real model:
how many streamed tokens a second the server carries when the engine is as fast as an
H200's (~10 ms a step at 64-128 sequences). Benchmarks only (`tools/bench_ingress.py`);
never a server's default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from inferflux.worker.actor import DeviceWorker
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Model

STEP_MS_ENV = "INFERFLUX_SYNTHETIC_STEP_MS"


class SyntheticContext:
    """What Engine uses of worker/llama.py's Context, with a sleep for a decode."""

    def __init__(self, model: Model, n_ctx: int, n_seq_max: int, n_batch: int, step_s: float):
        self.n_batch, self.n_seq_max = n_batch, n_seq_max
        self.cells_per_slot = n_ctx // n_seq_max
        self.ptr = None  # only sampler chains use it: the benchmark's requests are greedy
        token = model.tokenize(" the", add_special=False)[0]
        self._logits = np.zeros((n_batch, model.info.n_vocab), np.float32)
        self._logits[:, token] = 1.0
        self.step_s = step_s

    def fill(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[int],
    ) -> int:
        return len(tokens)

    def decode(self, n_tokens: int) -> int:
        time.sleep(self.step_s)  # blocks the worker's loop, as llama_decode does
        return 0

    def output_logits(self, n_outputs: int) -> np.ndarray:
        return self._logits[:n_outputs]

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> None:
        pass

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        pass

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass


class SyntheticWorker(DeviceWorker):
    async def started(self) -> None:
        model = Model(self.model_path, vocab_only=True)
        step_s = float(os.environ.get(STEP_MS_ENV, "10")) / 1000
        context = SyntheticContext(
            model, self.n_slots * self.cells_per_slot, self.n_slots, self.step_tokens, step_s
        )
        self.engine = Engine(model, context, None, self.max_step_s)  # type: ignore[arg-type]
        self.nursery.start_soon(self._step_loop)
