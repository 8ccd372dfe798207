from typing import Union

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports import Codec, MessageDecodeError


class Tokens(msgspec.Struct, tag=True, array_like=True):
    sequence_id: int
    token_ids: list[int]
    text: str


class Finish(msgspec.Struct, tag=True, array_like=True):
    sequence_id: int
    reason: str
    blob: bytes = b""


Message = Union[Tokens, Finish]
codec: Codec[Message] = Codec(Message)

tokens = st.builds(
    Tokens, st.integers(-(2**63), 2**63 - 1), st.lists(st.integers(0, 2**31)), st.text()
)
finishes = st.builds(Finish, st.integers(0, 2**32), st.text(), st.binary())


@given(st.one_of(tokens, finishes))
def test_round_trip_is_identity(message: Message) -> None:
    assert codec.decode(codec.encode(message)) == message


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_a_clear_error(data: bytes) -> None:
    try:
        decoded = codec.decode(data, peer="fuzz")
    except MessageDecodeError as exc:
        assert exc.peer == "fuzz" and exc.size == len(data)
        assert "bad message from fuzz" in str(exc)
    else:
        assert isinstance(decoded, (Tokens, Finish))


def test_unknown_tag_is_named_in_the_error() -> None:
    data = msgspec.msgpack.encode(["Mystery", 1])
    with pytest.raises(MessageDecodeError) as info:
        codec.decode(data, peer="worker-0")
    assert info.value.tag == "Mystery"
    assert "worker-0" in str(info.value)


def test_wrong_field_type_names_the_path() -> None:
    data = msgspec.msgpack.encode(["Tokens", "not-an-int", [], ""])
    with pytest.raises(MessageDecodeError, match=r"\$\[1\]"):
        codec.decode(data)
