"""What the store records about one model, and how a model gets its short name.

A manifest is written once, when a pull is verified, and read by `inferflux models` and
the server; it holds what the GGUF header says (architecture, context length, chat
template, pooling) so listing the store never opens model files.

Names look like Ollama's: `BASE:TAG`, lower case, e.g. `smollm2-135m-instruct:q4_1`,
where BASE comes from the file (or repo) name and TAG is the quantization found in the
file name (else the header's `general.file_type`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from .gguf import read_metadata

Capability = str  # "chat" | "completion" | "embedding" | "vision"

# Architectures that encode only (no next-token head): embeddings, never completions.
ENCODER_ARCHITECTURES = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"}
ENCODER_ARCHITECTURES |= {"neo-bert", "modern-bert"}


class Manifest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One model in the store (`manifest.json` beside its files)."""

    name: str
    """Short name, `base:tag`, unique in the store."""
    aliases: list[str] = []
    """Other names that resolve to it (the file's stem, `org/repo:QUANT` for hf://)."""
    source: str
    """Where it came from, as given to `inferflux pull` (normalized)."""
    file: str
    """The GGUF file, relative to the manifest's directory."""
    sha256: str
    """Of `file`, checked against the source's digest before the model became visible."""
    size: int
    """Of `file`, in bytes."""
    architecture: str = ""
    """`general.architecture` (llama, gemma3, bert, ...)."""
    quantization: str = ""
    """The tag, upper case as llama.cpp spells it (Q4_K_M), or "" when unknown."""
    context_length: int = 0
    """Training context window in tokens (`<arch>.context_length`); 0 when absent."""
    embedding_length: int = 0
    """Width of the hidden state / embedding vector (`<arch>.embedding_length`)."""
    has_chat_template: bool = False
    """The GGUF carries `tokenizer.chat_template`."""
    capabilities: list[Capability] = []
    """What the server can do with it: chat, completion, embedding (vision: with mmproj)."""
    mmproj_file: str = ""
    """The multimodal projector (from the same hf:// repo), relative; "" when none."""
    mmproj_sha256: str = ""
    pulled_at: str = ""
    """UTC, ISO 8601, when the pull finished."""
    dir: str = ""
    """Set when read from the store (the manifest's directory); never written."""

    @property
    def path(self) -> Path:
        """Absolute path of the GGUF file."""
        return Path(self.dir) / self.file

    @property
    def mmproj_path(self) -> Path | None:
        return Path(self.dir) / self.mmproj_file if self.mmproj_file else None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Manifest)


def encode(manifest: Manifest) -> bytes:
    return _encoder.encode(msgspec.structs.replace(manifest, dir=""))


def decode(data: bytes, directory: Path) -> Manifest:
    return msgspec.structs.replace(_decoder.decode(data), dir=str(directory))


def describe(gguf: Path) -> dict[str, Any]:
    """The manifest fields that come from a GGUF header."""
    meta = read_metadata(gguf)
    arch = str(meta.get("general.architecture", ""))
    has_template = bool(meta.get("tokenizer.chat_template"))
    if arch in ENCODER_ARCHITECTURES:
        capabilities = ["embedding"]
    else:
        # Any decoder embeds too: llama.cpp pools its last hidden states (the GGUF's
        # pooling type when it has one, else mean).
        capabilities = ["chat"] * has_template + ["completion", "embedding"]
    return {
        "architecture": arch,
        "context_length": _int(meta.get(f"{arch}.context_length")),
        "embedding_length": _int(meta.get(f"{arch}.embedding_length")),
        "has_chat_template": has_template,
        "capabilities": capabilities,
        "quantization": FILE_TYPES.get(_int(meta.get("general.file_type", -1)), ""),
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# llama.cpp's `llama_ftype` values as `general.file_type`.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4",
}  # fmt: skip

# Approximate bits per weight of each quantization (llama.cpp's `llama-quantize --help`):
# the scale `pull_hf.choose_quant` measures "nearest" on.
BITS_PER_WEIGHT = {
    "F32": 32.0, "BF16": 16.0, "F16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_1": 6.0,
    "Q5_K_M": 5.67, "Q5_K_S": 5.52, "Q5_0": 5.5, "Q4_1": 5.0, "Q4_K_M": 4.89, "Q4_K_S": 4.57,
    "Q4_0": 4.5, "IQ4_NL": 4.5, "Q3_K_L": 4.27, "IQ4_XS": 4.25, "MXFP4": 4.25, "Q3_K_M": 3.91,
    "IQ3_M": 3.66, "IQ3_S": 3.44, "Q3_K_S": 3.41, "IQ3_XS": 3.3, "IQ3_XXS": 3.06,
    "Q2_K": 2.96, "IQ2_M": 2.7, "Q2_K_S": 2.6, "IQ2_S": 2.5, "IQ2_XS": 2.31, "IQ2_XXS": 2.06,
    "TQ2_0": 2.06, "IQ1_M": 1.75, "TQ1_0": 1.69, "IQ1_S": 1.56,
}  # fmt: skip

# Longest first, so Q4_K_M is found before Q4_K... would match its prefix.
_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    + "|".join(sorted(map(re.escape, BITS_PER_WEIGHT), key=len, reverse=True))
    + r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}(:[a-z0-9][a-z0-9._-]{0,39})?$")


def quant_of(filename: str) -> str:
    """The quantization named in a file name (upper case), or ""."""
    matches = _QUANT_RE.findall(Path(filename).name.removesuffix(".gguf"))
    return matches[-1].upper() if matches else ""


def slug(text: str) -> str:
    """Lower case, runs of anything outside [a-z0-9._-] as one '-', trimmed."""
    text = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return text[:80] or "model"


def short_name(stem: str, quant: str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1` + Q4_1 -> `smollm2-135m-instruct:q4_1`."""
    base = _QUANT_RE.sub("", stem) if quant else stem
    tag = quant.lower() if quant else "latest"
    return f"{slug(base)}:{tag}"


def check_name(name: str) -> str:
    """A name a user chose (`--name`): `base` or `base:tag`, lower case."""
    if not NAME_RE.match(name) or name.split(":")[0] == "partial":
        raise ValueError(
            f"bad model name {name!r}: use lower-case letters, digits, '.', '_', '-', "
            "optionally ':tag' (e.g. smollm2-135m-instruct:q4_1); 'partial' is reserved"
        )
    return name if ":" in name else f"{name}:latest"
