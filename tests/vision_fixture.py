"""A tiny random-weights mmproj GGUF for the default model (issue 16), and test images.

No vision-language model ships on PyPI, so the image tests use a projector of the kind
SmolVLM pairs with SmolLM2: a SigLIP vision tower through the `idefics3` projector (pixel
shuffle, then one linear layer), with the keys and tensors the vendored llama.cpp's
`tools/mtmd/clip.cpp` reads (`load_hparams`, `load_tensors`, `models/siglip.cpp`). The
weights are random (seeded): it checks the whole path (preprocessing, tiling, encoding,
embeddings of width 576 decoded into the language model, positions, KV, prefix reuse,
recompute), not that the model understands a picture.

Kept tiny so encoding is milliseconds on a CPU: 64 px tiles of 8 px patches (64 patches),
2 layers of width 64, scale factor 2 -> 16 image tokens per tile. The idefics3
preprocessor resizes an image's longest edge to `preproc_image_size` (64 here, so one
tile) and adds an overview: 32 image tokens per image, in two chunks of 16.

Generated once, under the model store's cache dir (never in git); the `gguf` package comes
with the test extras.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from inferflux.model.library import store_dir

TEXT_EMBD = 576  # SmolLM2-135M's embedding width: what the projector must output
IMAGE_SIZE, PATCH, WIDTH, FF, LAYERS, HEADS, SCALE = 64, 8, 64, 128, 2, 4, 2
VERSION = 1  # bump when the layout changes: a new file name, a new cache entry
TOKENS_PER_IMAGE = 2 * (IMAGE_SIZE // PATCH // SCALE) ** 2  # overview + one tile


def fixture_path() -> Path:
    return store_dir().parent / "fixtures" / f"mmproj-idefics3-tiny-{TEXT_EMBD}-v{VERSION}.gguf"


def tiny_mmproj(path: Path | None = None, seed: int = 16) -> Path:
    """The fixture's path, writing it first if it is not there yet (atomically)."""
    path = path or fixture_path()
    if path.is_file():
        return path
    import gguf  # the test extras: not a dependency of the server

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def rand(*shape: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("inferflux test projector (random weights)")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("idefics3")
    writer.add_vision_projection_dim(TEXT_EMBD)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH)
    writer.add_vision_embedding_length(WIDTH)
    writer.add_vision_feed_forward_length(FF)
    writer.add_vision_block_count(LAYERS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(SCALE)
    writer.add_vision_preproc_image_size(IMAGE_SIZE)
    # Shapes as numpy (PyTorch) orders them; the writer reverses them into ggml's ne[].
    n_patches = (IMAGE_SIZE // PATCH) ** 2
    writer.add_tensor("v.patch_embd.weight", rand(WIDTH, 3, PATCH, PATCH))
    writer.add_tensor("v.patch_embd.bias", rand(WIDTH))
    writer.add_tensor("v.position_embd.weight", rand(n_patches, WIDTH))
    for i in range(LAYERS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", rand(WIDTH, WIDTH))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", rand(WIDTH))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", np.ones(WIDTH, np.float32))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(WIDTH, np.float32))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", rand(FF, WIDTH))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", rand(FF))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", rand(WIDTH, FF))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", rand(WIDTH))
    writer.add_tensor("v.post_ln.weight", np.ones(WIDTH, np.float32))
    writer.add_tensor("v.post_ln.bias", np.zeros(WIDTH, np.float32))
    # Pixel shuffle puts SCALE^2 patches side by side; the projector maps them to 576.
    writer.add_tensor("mm.model.fc.weight", rand(TEXT_EMBD, WIDTH * SCALE * SCALE, std=0.01))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def png(
    width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG", solid: bool = False
) -> bytes:
    """A small image of random colours (or one colour: a large image in a small file),
    encoded (PNG by default)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (1, 1, 3) if solid else (height, width, 3)
    pixels = np.broadcast_to(rng.integers(0, 256, shape, dtype=np.uint8), (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, fmt)
    return out.getvalue()
