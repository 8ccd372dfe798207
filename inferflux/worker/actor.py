"""The device worker: an actor in its own OS process that owns the model and runs steps.

It runs the step loop itself (not one step per scheduler request): between steps it takes
whatever Admit/Cancel messages arrived, then runs the next step and streams the
StepResult out on the stream the scheduler opened with Attach. When nothing is running it
sleeps until a message arrives. llama_decode runs on the Trio thread: a step is tens of
milliseconds, and messages queue in nng meanwhile, to be taken in order before the next.

A sequence with a grammar that is not compiled yet waits for it in a task of its own (the
compile runs in a thread, ~250 ms for a dozen-field schema): the message loop goes on
taking other Admits and Cancels meanwhile. Its slot's cells are set up at once all the
same (the reused prefix copied, the rest dropped: Engine.reserve), because the
scheduler's KV manager plans every later placement on them. A Cancel that arrives during
the compile is applied right after the Admit, so the scheduler still gets its "cancelled"
output.
A sequence with images (issue 16) waits the same way while they are encoded, in a thread,
one image at a time (worker/projector.py); images wholly inside the reused prefix are not
encoded at all.
"""

from __future__ import annotations

import os
import time
from typing import Any

# llama_cpp before anything imports numpy (constraint.py does): on the CUDA image
# numpy first makes model loading segfault (shared/notes/ENVIRONMENT.md).
import llama_cpp  # noqa: F401
import msgspec
import trio

from actors import Actor, ActorUnavailable, Envelope, Rejected

from ..config import SpeculativeConfig
from ..kvcache import staging
from ..messages import (
    Admit,
    Attach,
    Cancel,
    Embed,
    Embedded,
    EmbeddingRefused,
    WorkerMessage,
    WorkerReady,
    WorkerReply,
)
from .constraint import compiled
from .embedding import Embedder
from .engine import Engine
from .llama import Context, Model
from .projector import Picture, Projector
from .sequence import ImageRows


class DeviceWorker(Actor):
    message_type = WorkerMessage
    reply_type = WorkerReply
    error_type = EmbeddingRefused
    mailbox_capacity = 4096

    def __init__(
        self,
        name: str,
        *,
        model_path: str,
        n_slots: int,
        cells_per_slot: int,
        step_tokens: int,
        max_step_s: float = 0.0,
        threads: int,
        gpu_layers: int = 0,
        speculative: dict | None = None,
        crash_on_text: str = "",
        mmproj_path: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.model_path = model_path
        self.n_slots = n_slots
        self.cells_per_slot = cells_per_slot
        self.step_tokens = step_tokens
        self.max_step_s = max_step_s
        self.threads = threads or max(1, os.cpu_count() or 1)
        self.gpu_layers = gpu_layers
        # [speculative] of the server's config, as a dict (it crosses the process line)
        self.speculative = SpeculativeConfig(**speculative) if speculative else None
        self.engine: Engine | None = None
        self.embedder: Embedder | None = None  # made on the first Embed
        self._results: Envelope | None = None
        self._wake = trio.Event()
        # seq_id -> cancelled while its grammar compiles; cleared by a new Attach (epoch).
        self._compiling: dict[int, bool] = {}
        self._epoch = 0
        # Fault injection (chaos mode only, server.chaos_poison_text): a prompt holding
        # this text makes this process abort, as a request that crashes llama.cpp would.
        self.crash_on_text = crash_on_text
        self.mmproj_path = mmproj_path
        self.projector: Projector | None = None
        self._encoder = trio.CapacityLimiter(1)  # one image encodes at a time
        self.images_encoded, self.encode_s = 0, 0.0  # since the last step result

    async def started(self) -> None:
        model = Model(self.model_path, n_gpu_layers=self.gpu_layers)
        if model.on_gpu:  # exported KV states are copied from the GPU: pin their buffers
            staging.use_cuda_pinning()
        context = Context(
            model,
            n_ctx=self.n_slots * self.cells_per_slot,
            n_seq_max=self.n_slots,
            n_batch=self.step_tokens,
            n_threads=self.threads,
        )
        self.engine = Engine(model, context, self.speculative, self.max_step_s)
        if self.mmproj_path:
            self.projector = Projector(self.mmproj_path, model, threads=self.threads)
        self.nursery.start_soon(self._step_loop)

    async def stopping(self) -> None:
        if self.projector is not None:
            self.projector.close()
            self.projector = None
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None
        if self.engine is not None:
            self.engine.close()
            self.engine.context.close()
            self.engine.model.close()
            self.engine = None

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        assert self.engine is not None
        match message:
            case Attach():
                if self._results is not None:
                    self._results.fail(ActorUnavailable(self.name, "another scheduler attached"))
                self.engine.reset()
                self._compiling.clear()
                self._epoch += 1
                self._results = envelope
                envelope.defer()
                envelope.send(WorkerReady(self.engine.fingerprint))
            case Admit():
                if self.crash_on_text:  # chaos mode only
                    tokens = [t for t in message.tokens if t >= 0]  # no image ids
                    if self.crash_on_text in self.engine.model.detokenize(tokens):
                        os.abort()
                if message.sampling.grammar or message.images:
                    # Its cells now, in order with every other message (Engine.reserve).
                    if not self.engine.reserve(message):
                        self._wake.set()
                        return None
                    self._compiling[message.seq_id] = False
                    self.nursery.start_soon(self._prepare_then_admit, message, self._epoch)
                else:
                    self.engine.admit(message)
            case Embed(inputs):
                return self._embed(inputs)
            case Cancel(seq_id, _):
                if seq_id in self._compiling:
                    self._compiling[seq_id] = True
                else:
                    self.engine.cancel(seq_id)
        self._wake.set()
        return None

    def _embed(self, inputs: list[list[int]]) -> Embedded:
        assert self.engine is not None
        try:
            if self.embedder is None:
                self.embedder = Embedder(self.engine.model, self.threads)
            return Embedded(self.embedder.embed(inputs), self.embedder.dimensions)
        except (ValueError, RuntimeError) as exc:  # ModelLoadError is a RuntimeError
            raise Rejected(self.name, EmbeddingRefused(str(exc))) from None

    async def _prepare_then_admit(self, admit: Admit, epoch: int) -> None:
        """Compile its grammar and encode its images in threads, then admit it."""
        assert self.engine is not None
        if admit.sampling.grammar:
            try:
                await trio.to_thread.run_sync(compiled, self.engine.model, admit.sampling.grammar)
            except Exception:
                pass  # the engine's admit meets the same error and ends the sequence with it
        images: list[ImageRows] = []
        error = ""
        if admit.images:
            try:
                images = await trio.to_thread.run_sync(self._encode, admit, limiter=self._encoder)
            except (ValueError, RuntimeError) as exc:
                error = f"the image could not be encoded: {exc}"
        if epoch != self._epoch:
            return  # a new scheduler attached meanwhile: this Admit is from the old one
        cancelled = self._compiling.pop(admit.seq_id)
        if error:
            self.engine.fail(admit.seq_id, error)
        else:
            self.engine.start(admit, images)
            if cancelled:
                self.engine.cancel(admit.seq_id)
        self._wake.set()

    def _encode(self, admit: Admit) -> list[ImageRows]:
        """The embeddings of the images not wholly inside the reused prefix. Blocking."""
        if self.projector is None:
            raise ValueError("this worker has no projector (mmproj) for images")
        out: list[ImageRows] = []
        for image in admit.images:
            if all(start + rows <= admit.n_cached for start, rows in image.spans):
                continue
            started = time.perf_counter()
            chunks = self.projector.encode(Picture(image.width, image.height, image.rgb))
            if [len(c) for c in chunks] != [rows for _, rows in image.spans]:
                raise ValueError("the projector laid the image out differently than the ingress")
            out += [ImageRows(start, c) for (start, _), c in zip(image.spans, chunks, strict=True)]
            self.images_encoded += 1
            self.encode_s += time.perf_counter() - started
        return out

    def details(self) -> dict[str, float | int | str]:
        if self.engine is None:
            return {}
        return {"running": len(self.engine.sequences), "steps": self.engine.steps}

    async def _step_loop(self) -> None:
        assert self.engine is not None
        while True:
            if self.engine.idle or self._results is None:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            result = self.engine.step()
            if self.images_encoded:
                result = msgspec.structs.replace(
                    result, images_encoded=self.images_encoded, encode_s=self.encode_s
                )
                self.images_encoded, self.encode_s = 0, 0.0
            self._results.send(result)
            self.messages_out += 1
            # Let the messages that arrived during the step in before the next one.
            for _ in range(3):
                await trio.sleep(0)
