"""The model store on disk: layout, manifests, locks, atomic install and removal.

    $INFERFLUX_HOME/models/               (default ~/.cache/inferflux/models)
      BASE/TAG/manifest.json              one model: its manifest ...
      BASE/TAG/<file>.gguf                ... its GGUF, and its mmproj file if any
      partial/<source-key>/               pulls under way (an hf:// download resumes here)
      .locks/<key>.lock                   fcntl.flock: one pull per source, one install per name

A model is visible exactly when `BASE/TAG/manifest.json` exists. A pull assembles the
whole directory (files fsynced, manifest written) under `partial/` and moves it in with one
`rename`, so a crash or a failed check at any point leaves the store as it was: no half
file, no manifest pointing at nothing. Readers take no lock; a rename is atomic for them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

from . import manifest as mf
from .manifest import Manifest

MANIFEST = "manifest.json"


class ModelStoreError(RuntimeError):
    """A store operation that cannot be done; the message says why and what to do."""


def store_dir() -> Path:
    """`$INFERFLUX_HOME/models`, default `~/.cache/inferflux/models`."""
    home = os.environ.get("INFERFLUX_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inferflux"
    )
    return Path(home) / "models"


class Library:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or store_dir()

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    def model_dir(self, name: str) -> Path:
        base, _, tag = name.partition(":")
        return self.root / base / (tag or "latest")

    # -- reading --------------------------------------------------------------------------

    def manifests(self) -> list[Manifest]:
        """Every model in the store, by name. A damaged manifest is skipped, not fatal."""
        found = []
        for path in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if path.parts[-3] == "partial":
                continue
            try:
                found.append(mf.decode(path.read_bytes(), path.parent))
            except (OSError, msgspec.DecodeError):
                continue
        return sorted(found, key=lambda m: m.name)

    def get(self, name: str) -> Manifest | None:
        path = self.model_dir(name) / MANIFEST
        try:
            return mf.decode(path.read_bytes(), path.parent)
        except (OSError, msgspec.DecodeError):
            return None

    def find(self, name: str) -> Manifest:
        """By name (`base:tag`), by `base` alone when one tag has it, or by alias."""
        models = self.manifests()
        wanted = name.lower()
        exact = [m for m in models if m.name == wanted]
        if not exact and ":" not in wanted:
            exact = [m for m in models if m.name.split(":")[0] == wanted]
        if not exact:
            exact = [m for m in models if wanted in (a.lower() for a in m.aliases)]
        if len(exact) == 1:
            return exact[0]
        if exact:
            names = ", ".join(m.name for m in exact)
            raise ModelStoreError(f"{name!r} could mean any of: {names}; give the full name")
        known = ", ".join(m.name for m in models) or "none yet: `inferflux pull SOURCE`"
        raise ModelStoreError(f"no model {name!r} in the store {self.root} (models: {known})")

    # -- writing --------------------------------------------------------------------------

    @contextmanager
    def lock(self, key: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """An exclusive flock on `.locks/<key>.lock`, held for the block. The file stays
        (unlinking a lock file others may be waiting on would let two holders in)."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{key}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def new_stage(self, key: str) -> Path:
        """An empty directory under `partial/<key>/` to assemble a model directory in."""
        stage = self.partial_dir / key / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        return stage

    def install(self, stage: Path, manifest: Manifest) -> Manifest:
        """Write the manifest into `stage` (which holds its files) and move the directory
        into place, replacing an older copy of the same name."""
        for item in stage.iterdir():
            _fsync_file(item)
        write_atomic(stage / MANIFEST, mf.encode(manifest))
        target = self.model_dir(manifest.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(_lock_key(manifest.name)):
            old = self._move_aside(target)
            os.rename(stage, target)
            _fsync_dir(target.parent)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        return mf.decode((target / MANIFEST).read_bytes(), target)

    def remove(self, name: str) -> Manifest:
        model = self.find(name)
        target = Path(model.dir)
        with self.lock(_lock_key(model.name)):
            old = self._move_aside(target)  # invisible at once, even if deleting is slow
            if old:
                shutil.rmtree(old, ignore_errors=True)
        try:
            target.parent.rmdir()  # the BASE directory, when this was its last tag
        except OSError:
            pass
        return model

    def _move_aside(self, target: Path) -> Path | None:
        if not target.exists():
            return None
        trash = self.partial_dir / f"removed-{uuid.uuid4().hex[:12]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.rename(target, trash)
        return trash


def _lock_key(name: str) -> str:
    return "model-" + name.replace(":", "@")


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, fsync, rename: readers see the old or the new
    content, never a part."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    if path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
