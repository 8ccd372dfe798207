"""A multimodal projector (mmproj GGUF) through llama.cpp's libmtmd (`llama_cpp.mtmd_cpp`).

Two users, one wrapper: the ingress lays images out (how many positions each takes, and
the model's own text around them: SmolVLM's `<fake_token_around_image>` and row/column
markers), and the device worker encodes them into embeddings of the language model's
width. Both ask mtmd the same question, `mtmd_tokenize` of the media marker with one
bitmap, so the layout the ingress counts is the one the worker decodes.

An image becomes segments: text tokens (the model's template around the image) and image
chunks (rows of embeddings, one position each). Template tokens the model's vocabulary
lacks are left out (mtmd looks them up by text and gets LLAMA_TOKEN_NULL: with SmolVLM
they all exist; with the random test projector on SmolLM2 some do not).

Not supported (refused at load, with the reason): projectors that decode with M-RoPE
(Qwen2-VL: positions are not one per row) or non-causal attention (Gemma 3: a chunk
must be decoded whole in one batch), and audio.

The ingress's copy loads the projector's weights too (a vocabulary-only text model
underneath, no warmup): the price of exact layouts without a round trip to the worker.
mtmd objects are not shared between threads: one lock per projector.
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass

import llama_cpp as L
import llama_cpp.mtmd_cpp as M
import numpy as np

from .llama import Model, ModelLoadError, quiet_log

TEXT, IMAGE = 0, 1  # MTMD_INPUT_CHUNK_TYPE_*


@dataclass(frozen=True)
class Picture:
    """An image decoded to 8-bit RGB (row-major, width * height * 3 bytes)."""

    width: int
    height: int
    rgb: bytes


Segment = list[int] | int
"""Text tokens, or the number of image rows (positions) of one image chunk."""


class Projector:
    def __init__(self, path: str, model: Model, *, threads: int = 1, use_gpu: bool = False) -> None:
        if not os.environ.get("INFERFLUX_LLAMA_LOG"):  # clip logs every load detail
            M.mtmd_log_set(quiet_log, ctypes.c_void_p(0))
        params = M.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = max(1, threads)
        params.print_timings = False
        params.warmup = False
        self.path = path
        self._marker = M.mtmd_default_marker()
        self.ptr = M.mtmd_init_from_file(path.encode(), model.ptr, params)
        if not self.ptr:
            raise ModelLoadError(
                f"llama.cpp could not load the projector {path} for {model.path} (not an "
                "mmproj GGUF, or made for a model of another embedding width)"
            )
        self.n_embd = L.llama_model_n_embd(model.ptr)
        reason = ""
        if not M.mtmd_support_vision(self.ptr):
            reason = "it has no vision encoder"
        elif M.mtmd_decode_use_mrope(self.ptr):
            reason = "it needs M-RoPE positions"
        elif M.mtmd_decode_use_non_causal(self.ptr, None):
            reason = "it decodes images with non-causal attention"
        if reason:
            self.close()
            raise ModelLoadError(f"the projector {path} is not supported: {reason}")
        self._lock = threading.Lock()

    def layout(self, picture: Picture) -> list[Segment]:
        """What the image becomes in the prompt, without encoding it (fast: preprocessing
        only)."""
        with self._lock:
            return self._tokenize(picture, None)

    def encode(self, picture: Picture) -> list[np.ndarray]:
        """One float32 array (rows x n_embd) per image chunk, in layout order. Blocking
        (the worker runs it in a thread)."""
        out: list[np.ndarray] = []
        with self._lock:
            self._tokenize(picture, out)
        return out

    def _tokenize(self, picture: Picture, encoded: list[np.ndarray] | None) -> list[Segment]:
        if len(picture.rgb) != picture.width * picture.height * 3 or not picture.rgb:
            raise ValueError(f"{len(picture.rgb)} bytes is no {picture.width}x{picture.height} RGB")
        data = (ctypes.c_ubyte * len(picture.rgb)).from_buffer_copy(picture.rgb)
        bitmap = M.mtmd_bitmap_init(picture.width, picture.height, data)
        chunks = M.mtmd_input_chunks_init()
        try:
            text = M.mtmd_input_text()
            text.text, text.text_len = self._marker, len(self._marker)
            text.add_special, text.parse_special = False, True
            bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bitmap)
            code = M.mtmd_tokenize(self.ptr, chunks, ctypes.byref(text), bitmaps, 1)
            if code != 0:
                raise ValueError(f"mtmd could not lay out the image (code {code})")
            segments: list[Segment] = []
            for i in range(M.mtmd_input_chunks_size(chunks)):
                chunk = M.mtmd_input_chunks_get(chunks, i)
                kind = M.mtmd_input_chunk_get_type(chunk)
                if kind == TEXT:
                    n = ctypes.c_size_t()
                    tokens = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    kept = [t for t in tokens[: n.value] if t >= 0]
                    if kept:
                        segments.append(kept)
                elif kind == IMAGE:
                    rows = M.mtmd_input_chunk_get_n_tokens(chunk)
                    if M.mtmd_input_chunk_get_n_pos(chunk) != rows:
                        raise ValueError("an image chunk whose positions are not its rows")
                    segments.append(rows)
                    if encoded is not None:
                        encoded.append(self._encode_chunk(chunk, rows))
                else:
                    raise ValueError(f"mtmd gave a chunk of type {kind}, not text or image")
            return segments
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)

    def _encode_chunk(self, chunk: M.mtmd_input_chunk_p, rows: int) -> np.ndarray:
        code = M.mtmd_encode_chunk(self.ptr, chunk)
        if code != 0:
            raise RuntimeError(f"mtmd could not encode the image (code {code})")
        out = M.mtmd_get_output_embd(self.ptr)
        return np.ctypeslib.as_array(out, shape=(rows, self.n_embd)).copy()

    def close(self) -> None:
        if self.ptr:
            M.mtmd_free(self.ptr)
            self.ptr = None
