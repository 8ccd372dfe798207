"""Thin ownership wrappers over llama.cpp's C objects (model, context, batch).

Everything here is synchronous and lives in the device worker's process. Objects are freed
in `close()`, called from the worker's `finally`; llama.cpp is never touched from two
threads at once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp as L
import numpy as np

_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        L.llama_backend_init()
        if not os.environ.get("INFERFLUX_LLAMA_LOG"):
            # llama.cpp logs every load detail to stderr; keep errors only.
            L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
        _backend_ready = True


@L.llama_log_callback
def _quiet_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    if level >= 4:  # GGML_LOG_LEVEL_ERROR
        os.write(2, text)


quiet_log = _quiet_log  # also for libmtmd's own logger (worker/projector.py)


@L.llama_progress_callback
def _no_progress(progress: float, user_data: ctypes.c_void_p) -> bool:
    return True  # keep loading, print nothing (the default prints dots to stderr)


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    n_ctx_train: int
    n_vocab: int
    bos: int
    eos: int
    add_bos: bool
    chat_template: str


class Model:
    """A loaded GGUF model. vocab_only=True loads the tokenizer alone (a few MB)."""

    def __init__(self, path: str, *, vocab_only: bool = False, n_gpu_layers: int = 0) -> None:
        _init_backend()
        if not os.path.isfile(path):
            raise ModelLoadError(f"model file not found: {path}")
        params = L.llama_model_default_params()
        params.vocab_only = vocab_only
        params.n_gpu_layers = n_gpu_layers
        params.progress_callback = _no_progress
        # llama.cpp's "extra buffer types" (weight repacking, AMX) crash in the AMX matmul
        # on this CPU family with batches > 1 (seen with llama-cpp-python 0.3.36); plain
        # buffers are safe everywhere. INFERFLUX_EXTRA_BUFTS=1 turns them back on.
        params.use_extra_bufts = os.environ.get("INFERFLUX_EXTRA_BUFTS") == "1"
        self.path = path
        self.n_gpu_layers = n_gpu_layers
        self.ptr = L.llama_model_load_from_file(path.encode(), params)
        if not self.ptr:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a GGUF model?)")
        self.vocab = L.llama_model_get_vocab(self.ptr)
        self.info = ModelInfo(
            name=self.meta("general.name") or os.path.basename(path),
            n_ctx_train=L.llama_model_n_ctx_train(self.ptr) or self._ctx_train_from_meta(),
            n_vocab=L.llama_vocab_n_tokens(self.vocab),
            bos=L.llama_vocab_bos(self.vocab),
            eos=L.llama_vocab_eos(self.vocab),
            add_bos=bool(L.llama_vocab_get_add_bos(self.vocab)),
            chat_template=self.meta("tokenizer.chat_template"),
        )
        # One piece buffer per thread: the ingress tokenizes and detokenizes in worker
        # threads while the event loop renders logprobs with the same Model.
        self._buffers = threading.local()
        # A token's text and end-of-generation flag never change, and every decode step
        # asks for them once a sequence: a dict lookup instead of a call into llama.cpp
        # (measured: 13% of a worker's CPU at 128 sequences, tools/bench_ingress.py).
        self._pieces: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})  # [special]
        self._eog: dict[int, bool] = {}

    @property
    def on_gpu(self) -> bool:
        """Layers are offloaded to a GPU (a GPU build, and gpu_layers not 0)."""
        return self.n_gpu_layers != 0 and bool(L.llama_supports_gpu_offload())

    def fingerprint(self) -> str:
        """What a sequence's exported KV depends on besides the context's layout: the
        model's architecture, size and weights (their byte count and parameter count; the
        file's name would not catch a re-quantized copy)."""
        desc = ctypes.create_string_buffer(256)
        L.llama_model_desc(self.ptr, desc, len(desc))
        return (
            f"{desc.value.decode(errors='replace')}, {L.llama_model_n_params(self.ptr)} params, "
            f"{L.llama_model_size(self.ptr)} bytes, {L.llama_model_n_layer(self.ptr)} layers"
        )

    def _ctx_train_from_meta(self) -> int:
        # A vocab-only load skips hyper-parameters; the GGUF metadata still has them.
        value = self.meta(f"{self.meta('general.architecture')}.context_length")
        return int(value) if value.isdigit() else 0

    def meta(self, key: str) -> str:
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return ""
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (L.llama_token * capacity)()
        n = L.llama_tokenize(
            self.vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            tokens = (L.llama_token * capacity)()
            n = L.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
        return list(tokens[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        pieces = self._pieces[special]
        text = pieces.get(token)
        if text is None:
            text = pieces[token] = self._piece(token, special)
        return text

    def _piece(self, token: int, special: bool) -> bytes:
        buffer = getattr(self._buffers, "piece", None)
        if buffer is None:
            buffer = self._buffers.piece = ctypes.create_string_buffer(256)
        n = L.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return buffer.raw[:n]

    def special_texts(self) -> list[str]:
        """The text of every token that tokenizing with parse_special matches as one
        special token (control and user-defined tokens), longest first."""
        special = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED
        texts = {
            self.piece(token, special=True).decode("utf-8", "replace")
            for token in range(self.info.n_vocab)
            if L.llama_vocab_get_attr(self.vocab, token) & special
        }
        return sorted((t for t in texts if t), key=len, reverse=True)

    def detokenize(self, tokens: list[int], *, special: bool = False) -> str:
        """Image ids (negative: ingress/images.py) have no text and are skipped."""
        n = self.info.n_vocab
        return b"".join(self.piece(t, special=special) for t in tokens if 0 <= t < n).decode(
            "utf-8", "replace"
        )

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(L.llama_vocab_is_eog(self.vocab, token))
        return eog

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A llama.cpp context with one KV stream per slot (n_ctx / n_seq_max cells each).

    Per-slot streams, because (1) a sequence's cells then always sit at the same indices
    for the same positions, so recomputing it after a crash gives bit-identical logits
    (greedy continuations equal token for token; with one unified buffer the cells land
    elsewhere, SIMD sums group differently, and greedy output drifts), and (2) served
    traffic is faster: 154 vs 143 tok/s at 16 clients in the same run, provided each
    step's batch is laid out in slot order (llama.cpp splits it into ubatches of
    consecutive slots). See docs/architecture.md.
    """

    def __init__(
        self, model: Model, *, n_ctx: int, n_seq_max: int, n_batch: int, n_threads: int
    ) -> None:
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = False
        params.no_perf = True
        self.ptr = L.llama_init_from_model(model.ptr, params)
        if not self.ptr:
            raise ModelLoadError(
                f"llama.cpp could not create a context (n_ctx={n_ctx}, n_seq_max={n_seq_max})"
            )
        self.n_ctx = L.llama_n_ctx(self.ptr)
        # What one sequence can hold: its own stream, not the whole n_ctx.
        self.cells_per_slot = L.llama_n_ctx_seq(self.ptr)
        self.memory = L.llama_get_memory(self.ptr)
        self.batch = L.llama_batch_init(n_batch, 0, 1)
        self._embd_batch: L.llama_batch | None = None  # made on the first image
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self.n_vocab = model.info.n_vocab
        # numpy views of the batch's arrays, so a step writes each one with a single slice
        # assignment (128 sequences: ~640 ctypes item writes otherwise, ~0.3 ms a step).
        batch = self.batch
        self._tokens = np.ctypeslib.as_array(batch.token, shape=(n_batch,))
        self._positions = np.ctypeslib.as_array(batch.pos, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(batch.logits, shape=(n_batch,))
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n_batch,))[:] = 1
        # llama_batch_init gives each row its own one-element seq_id array; aim the rows at
        # one contiguous array instead (the originals are put back before the batch is
        # freed, which frees them).
        self._seq_ids = np.zeros(n_batch, dtype=np.int32)
        # Addresses as ints: the pointer objects ctypes hands out share the array's memory.
        self._own_seq_id_rows = [
            ctypes.cast(batch.seq_id[i], ctypes.c_void_p).value for i in range(n_batch)
        ]
        self._seq_id_row_type = row_type = type(batch.seq_id[0])
        base = self._seq_ids.ctypes.data
        for i in range(n_batch):
            batch.seq_id[i] = ctypes.cast(base + 4 * i, row_type)

    def fill(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        logits: Sequence[int],
    ) -> int:
        """Lay out the next decode's batch: row i is tokens[i] at positions[i] of sequence
        seq_ids[i], with logits where logits[i] is 1. Returns the number of rows."""
        n = len(tokens)
        self._tokens[:n] = tokens
        self._positions[:n] = positions
        self._seq_ids[:n] = seq_ids
        self._logits[:n] = logits
        return n

    def output_logits(self, n_outputs: int) -> np.ndarray:
        """The last decode's logits, one row per batch row that asked for them, in batch
        order (llama.cpp reorders its outputs to that order first)."""
        return np.ctypeslib.as_array(L.llama_get_logits(self.ptr), shape=(n_outputs, self.n_vocab))

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> None:
        L.llama_memory_seq_rm(self.memory, seq, p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int, p1: int) -> None:
        L.llama_memory_seq_cp(self.memory, src, dst, p0, p1)

    def clear(self) -> None:
        L.llama_memory_clear(self.memory, True)

    def seq_pos_max(self, seq: int) -> int:
        """The last position the sequence holds in KV; -1 when it holds none."""
        return L.llama_memory_seq_pos_max(self.memory, seq)

    def seq_state_size(self, seq: int) -> int:
        """The bytes of one sequence's KV as llama.cpp serializes it (write_seq_state)."""
        return L.llama_state_seq_get_size(self.ptr, seq)

    def write_seq_state(self, seq: int, buffer: ctypes.Array[ctypes.c_uint8]) -> int:
        """Serialize one sequence's KV into `buffer` (llama_state_seq_get_data; a staging
        file's mapping): what a prefill node hands to a decode node. Returns the bytes
        written, 0 when the buffer is too small."""
        return L.llama_state_seq_get_data(self.ptr, buffer, len(buffer), seq)

    def load_seq_state(self, seq: int, buffer: ctypes.Array[ctypes.c_uint8], size: int) -> bool:
        """Load a state (write_seq_state's output, `size` bytes of `buffer`) into this
        sequence's stream; False when llama.cpp refuses it (another model's layout, more
        cells than the stream has)."""
        return L.llama_state_seq_set_data(self.ptr, buffer, size, seq) != 0

    def decode(self, n_tokens: int) -> int:
        self.batch.n_tokens = n_tokens
        return L.llama_decode(self.ptr, self.batch)

    def decode_embeddings(self, rows: np.ndarray, first_position: int, seq: int) -> int:
        """Decode rows of input embeddings (an image's) for one sequence, at consecutive
        positions, in a batch of their own: llama.cpp takes tokens or embeddings in a
        batch, never both. At most n_batch rows; no logits."""
        n, width = rows.shape
        if self._embd_batch is None:
            self._embd_batch = L.llama_batch_init(self.n_batch, width, 1)
        batch = self._embd_batch
        ctypes.memmove(batch.embd, np.ascontiguousarray(rows, np.float32).ctypes.data, rows.nbytes)
        np.ctypeslib.as_array(batch.pos, shape=(n,))[:] = range(first_position, first_position + n)
        np.ctypeslib.as_array(batch.n_seq_id, shape=(n,))[:] = 1
        np.ctypeslib.as_array(batch.logits, shape=(n,))[:] = 0
        for i in range(n):
            batch.seq_id[i][0] = seq
        batch.n_tokens = n
        return L.llama_decode(self.ptr, batch)

    def close(self) -> None:
        if self.ptr:
            for i, address in enumerate(self._own_seq_id_rows):
                self.batch.seq_id[i] = ctypes.cast(address, self._seq_id_row_type)
            L.llama_batch_free(self.batch)
            if self._embd_batch is not None:
                L.llama_batch_free(self._embd_batch)
            L.llama_free(self.ptr)
            self.ptr = None
