"""Incremental detokenization and stop strings, byte by byte (no model needed)."""

from hypothesis import given
from hypothesis import strategies as st

from inferflux.worker.output import TextOutput


def feed_all(output: TextOutput, pieces: list[bytes]) -> str:
    return "".join(output.feed(p) for p in pieces) + output.flush()


def test_multibyte_characters_are_never_split() -> None:
    text = "café 日本 🦊!"
    data = text.encode()
    output = TextOutput()
    emitted = [output.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(emitted) + output.flush() == text
    assert all("\ufffd" not in part for part in emitted)


def test_stop_string_spanning_pieces_is_cut_and_never_emitted() -> None:
    output = TextOutput(("STOP",))
    parts = [output.feed(p) for p in [b"Hello S", b"T", b"OP and more"]]
    assert parts == ["Hello ", "", ""]
    assert output.stopped and output.flush() == ""


def test_a_false_start_is_released() -> None:
    output = TextOutput(("STOP",))
    assert output.feed(b"ST") == ""
    assert output.feed(b"ART") == "START"
    assert output.flush() == ""


@given(
    st.text(max_size=40), st.lists(st.integers(1, 5), max_size=40), st.text(min_size=1, max_size=4)
)
def test_output_is_the_text_before_the_first_stop(text: str, cuts: list[int], stop: str) -> None:
    data = text.encode()
    pieces, i = [], 0
    for n in cuts:
        pieces.append(data[i : i + n])
        i += n
    pieces.append(data[i:])
    emitted = feed_all(TextOutput((stop,)), pieces)
    expected = text[: text.index(stop)] if stop in text else text
    assert emitted == expected
