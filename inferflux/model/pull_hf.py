"""hf://ORG/REPO[:QUANT]: one GGUF (and the repo's mmproj) through huggingface_hub.

huggingface_hub does the HTTP: it honours HF_ENDPOINT (a mirror, or the stand-in hub of
the tests), HF_TOKEN (private and gated repos) and HF_HUB_OFFLINE, follows redirects and
retries; the bytes go to a `.part` file in the pull's work directory, from which an
interrupted `inferflux pull` continues (`_download`). The file list
comes from `model_info(files_metadata=True)`, whose LFS entries carry each file's sha256:
that is what the downloaded bytes are checked against.

Which file, for a requested quantization Q (default Q4_K_M): the file tagged Q if the repo
has one, else the one whose bits per weight (manifest.BITS_PER_WEIGHT) are nearest to
Q's, the larger on a tie (e.g. no Q4_K_M: Q4_1 (5.0) before Q4_K_S (4.57)).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .fetch import AlreadyPresent, Context, Fetched
from .library import ModelStoreError
from .manifest import BITS_PER_WEIGHT, quant_of
from .sources import HfSource

DEFAULT_QUANT = "Q4_K_M"
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
# Projector files of a vision model: the most precise first (they are small).
_MMPROJ_PREFERENCE = ("F32", "F16", "BF16", "Q8_0")


def choose_quant(available: list[str], wanted: str) -> str:
    """The quantization to take from `available` (upper case tags) for `wanted`."""
    if wanted in available:
        return wanted
    target = BITS_PER_WEIGHT.get(wanted, BITS_PER_WEIGHT[DEFAULT_QUANT])
    return min(
        available, key=lambda q: (abs(BITS_PER_WEIGHT.get(q, 99.0) - target), -BITS_PER_WEIGHT[q])
    )


def fetch_hf(source: HfSource, ctx: Context) -> Fetched:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return _offline(source, ctx)
    commit, files = _list_files(source)
    ggufs = {name: sha for name, sha in files.items() if name.lower().endswith(".gguf")}
    mmprojs = sorted(n for n in ggufs if "mmproj" in Path(n).name.lower())
    models = {n: sha for n, sha in ggufs.items() if n not in mmprojs}
    by_quant = _by_quant(models, source)
    wanted = source.quant or DEFAULT_QUANT
    quant = choose_quant(list(by_quant), wanted) if "" not in by_quant else ""
    filename = by_quant[quant]
    ctx.progress.note(
        f"  {source.repo}: {len(models)} GGUF file(s) ({', '.join(sorted(by_quant))})"
        + (f", projector {Path(mmprojs[0]).name}" if mmprojs else "")
    )
    if quant and quant != wanted:
        ctx.progress.note(f"  no {wanted} in the repo: taking {quant}, the nearest")
    expected = models[filename]
    if expected and (present := ctx.known(expected)):
        raise AlreadyPresent(present)
    gguf = _download(source.repo, filename, commit, expected, ctx)
    mmproj_file = _pick_mmproj(mmprojs) if mmprojs else ""
    mmproj = (
        _download(source.repo, mmproj_file, commit, ggufs[mmproj_file], ctx) if mmprojs else None
    )
    return Fetched(
        gguf=gguf,
        expected_sha256=expected,
        base=_repo_base(source.repo),
        quant=quant,
        aliases=[f"{source.repo}:{quant}" if quant else source.repo],
        mmproj=mmproj,
        mmproj_expected_sha256=ggufs[mmproj_file] if mmprojs else "",
    )


def _list_files(source: HfSource) -> tuple[str | None, dict[str, str]]:
    """The main revision's commit and {file name: LFS sha256 or ""}: the files are then
    downloaded from that commit, so a push in between cannot mix two versions."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    endpoint = constants.ENDPOINT
    try:
        info = HfApi().model_info(source.repo, files_metadata=True)
    except GatedRepoError:
        raise ModelStoreError(
            f"{source.repo} is gated: accept its terms on {endpoint} and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise ModelStoreError(
            f"no model repo {source.repo} on {endpoint} (a private one needs HF_TOKEN)"
        ) from None
    except HfHubHTTPError as exc:
        raise ModelStoreError(f"{endpoint} refused the file list of {source.repo}: {exc}") from None
    except OSError as exc:  # httpx transport errors are OSErrors here too
        raise ModelStoreError(f"cannot reach {endpoint} ({exc}); set HF_ENDPOINT?") from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise ModelStoreError(f"cannot reach {endpoint}: {exc}") from None
        raise
    return info.sha, {s.rfilename: (s.lfs.sha256 if s.lfs else "") for s in info.siblings or []}


def _by_quant(models: dict[str, str], source: HfSource) -> dict[str, str]:
    """{quantization: file}; a repo with one unlabeled GGUF gives {"": it}."""
    by_quant: dict[str, str] = {}
    shards, unlabeled = [], []
    for name in sorted(models):
        if _SHARD_RE.search(name):
            shards.append(name)
        elif quant := quant_of(name):
            by_quant.setdefault(quant, name)
        else:
            unlabeled.append(name)
    if not by_quant and len(unlabeled) == 1:
        return {"": unlabeled[0]}
    if not by_quant:
        what = (
            f"only split GGUF files ({', '.join(shards[:3])}...), which pull does not join yet"
            if shards
            else f"{len(unlabeled)} GGUF files, none with a quantization in its name"
        )
        raise ModelStoreError(f"{source.repo} has {what}; nothing to pull")
    return by_quant


def _repo_base(repo: str) -> str:
    """`org/SmolLM2-135M-Instruct-GGUF` -> `SmolLM2-135M-Instruct`."""
    return re.sub(r"[-_.]gguf$", "", repo.split("/")[1], flags=re.IGNORECASE)


def _pick_mmproj(mmprojs: list[str]) -> str:
    for quant in _MMPROJ_PREFERENCE:
        for name in mmprojs:
            if quant_of(name) == quant:
                return name
    return mmprojs[0]


def _download(repo: str, filename: str, commit: str | None, digest: str, ctx: Context) -> Path:
    """Download into `<work>/download/`, continuing a `.part` file an earlier, interrupted
    pull left there (an HTTP Range request).

    Why not `hf_hub_download(local_dir=...)`: since huggingface_hub 1.x it writes to a
    per-process temporary file and deletes it on failure, so it resumes only within one
    call, never after a Ctrl-C or a kill. Its own building blocks still do the HTTP here:
    `hf_hub_url` and `get_hf_file_metadata` (endpoint, token, redirects) and `http_get`
    (Range, retries with resume within the call, size check)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    target = ctx.work / "download" / Path(filename).name
    # The published digest in the name: a newer upload never continues an older part.
    part = target.with_name(f"{target.name}.{digest[:16] or 'nodigest'}.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    ctx.progress.label = target.name
    try:
        url = hf_hub_url(repo, filename, revision=commit)
        meta = get_hf_file_metadata(url)
        done = part.stat().st_size if part.exists() else 0
        if meta.size is not None and done > meta.size:
            part.unlink()
            done = 0
        with open(part, "ab") as out:
            http_get(
                meta.location,
                out,
                resume_size=done,
                headers=build_hf_headers(),
                expected_size=meta.size,
                tqdm_class=ctx.progress.tqdm_class(),  # type: ignore[arg-type]
            )
    except HfHubHTTPError as exc:
        raise ModelStoreError(f"downloading {filename} from {repo} failed: {exc}") from None
    except OSError as exc:
        raise ModelStoreError(
            f"downloading {filename} from {repo} failed ({exc}); run the same pull again to resume"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise ModelStoreError(
                f"downloading {filename} from {repo} failed ({exc}); run the same pull again "
                "to resume"
            ) from None
        raise
    finally:
        ctx.progress.label = ""
    os.replace(part, target)
    return target


def _offline(source: HfSource, ctx: Context) -> Fetched:
    """HF_HUB_OFFLINE: nothing is fetched. The store may have it already; else the
    Hugging Face cache (~/.cache/huggingface, HF_HOME) may hold the repo from an earlier
    `hf download`: its blobs are named by their sha256, which is what we check."""
    if present := ctx.from_source(str(source)) or ctx.from_source(f"hf://{source.repo}"):
        raise AlreadyPresent(present)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(source.repo, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelStoreError(
            f"HF_HUB_OFFLINE is set and {source} is neither in the store nor in the Hugging "
            "Face cache; unset HF_HUB_OFFLINE to download it"
        ) from None
    files = {str(p.relative_to(snapshot)): p for p in snapshot.rglob("*.gguf")}
    mmprojs = sorted(n for n in files if "mmproj" in Path(n).name.lower())
    by_quant = _by_quant({n: "" for n in files if n not in mmprojs}, source)
    wanted = source.quant or DEFAULT_QUANT
    quant = choose_quant(list(by_quant), wanted) if "" not in by_quant else ""
    cached = files[by_quant[quant]]
    mmproj = files[_pick_mmproj(mmprojs)] if mmprojs else None
    ctx.progress.note(f"  offline: taking {cached.name} from the Hugging Face cache")
    return Fetched(
        gguf=cached,  # a link to the blob; link/copy follow it
        expected_sha256=_blob_sha256(cached),
        owned=False,  # the cache's file: link or copy it, never move it
        base=_repo_base(source.repo),
        quant=quant,
        aliases=[f"{source.repo}:{quant}" if quant else source.repo],
        mmproj=mmproj,
        mmproj_expected_sha256=_blob_sha256(mmproj) if mmproj else "",
    )


def _blob_sha256(path: Path) -> str:
    """The cache names an LFS file's blob by its sha256 (a small git file's by its sha1:
    nothing to check then)."""
    name = path.resolve().name
    return name if re.fullmatch(r"[0-9a-f]{64}", name) else ""
