"""What every source's fetcher gets (`Context`) and gives back (`Fetched`), and the
simplest fetcher: a local file.

A fetcher only brings files into its work directory (`partial/<source-key>/`) and says
what their digests must be; checking them, naming the model and installing it is
`pull.py`'s job, the same for every source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .library import Library
from .manifest import Manifest
from .progress import Progress, copy_hashing, human, sha256_file


@dataclass
class Fetched:
    gguf: Path
    """The model file, inside the work directory (or the user's own file, see `owned`)."""
    expected_sha256: str = ""
    """The digest the source publishes; "" when it publishes none (a local file)."""
    sha256: str = ""
    """The digest computed while fetching; "" = compute it before installing."""
    owned: bool = True
    """The file is ours to move into the store; False: link or copy it (a user's file)."""
    base: str = ""
    """Name to derive the short name from instead of the file's stem (an hf repo)."""
    quant: str = ""
    aliases: list[str] = field(default_factory=list)
    mmproj: Path | None = None
    mmproj_expected_sha256: str = ""


class AlreadyPresent(Exception):
    """The store already holds exactly what the source would give."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest.name)
        self.manifest = manifest


@dataclass
class Context:
    library: Library
    work: Path
    progress: Progress
    quiet: bool = False
    name: str = ""
    """The name asked for (`--name`); "" = derived."""

    def known(self, sha256: str) -> Manifest | None:
        """A model in the store with this digest (and the name asked for), if any."""
        return next(
            (
                m
                for m in self.library.manifests()
                if m.sha256 == sha256 and (not self.name or m.name == self.name)
            ),
            None,
        )

    def from_source(self, source: str) -> Manifest | None:
        return next((m for m in self.library.manifests() if m.source == source), None)


def fetch_local(path: Path, ctx: Context) -> Fetched:
    """A file already on this machine: hash it once (to skip a model already stored);
    `pull` then hard-links it into the store (no copy), or copies it across filesystems."""
    ctx.progress.start(f"hashing {path.name}", path.stat().st_size, steps=False)
    digest = sha256_file(path, ctx.progress)
    ctx.progress.finish()
    if present := ctx.known(digest):
        raise AlreadyPresent(present)
    return Fetched(gguf=path, sha256=digest, owned=False)


def place(src: Path, dst: Path, *, owned: bool, progress: Progress) -> str:
    """Put `src` at `dst` (inside the stage directory): move what is ours, hard-link or
    copy what is not. Returns the sha256 when a copy computed it, else ""."""
    if owned:
        os.replace(src, dst)
        return ""
    try:
        os.link(src, dst)
        progress.note(f"  linked {src} (same filesystem: no copy)")
        return ""
    except OSError:
        pass
    size = src.stat().st_size
    progress.note(f"  copying {src} ({human(size)})")
    progress.start(src.name, size)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        copy_hashing(fin, fout, digest, progress)
    progress.finish()
    shutil.copystat(src, dst)
    return digest.hexdigest()
