import pytest

from transports import Address, AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inproc://scheduler", Address("inproc", name="scheduler")),
        ("ipc:///tmp/inferflux.sock", Address("ipc", path="/tmp/inferflux.sock")),
        ("tcp://127.0.0.1:5555", Address("tcp", host="127.0.0.1", port=5555)),
        ("tcp://localhost:0", Address("tcp", host="localhost", port=0)),
        ("tcp://[::1]:80", Address("tcp", host="::1", port=80)),
    ],
)
def test_valid_addresses_parse_and_print_back(text: str, expected: Address) -> None:
    address = parse_address(text)
    assert address == expected
    assert str(address) == text


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("scheduler", "no scheme"),
        ("http://x:1", "unknown scheme"),
        ("inproc://", "inproc name"),
        ("ipc://relative.sock", "absolute"),
        ("ipc:///" + "x" * 200, "OS limit"),
        ("tcp://127.0.0.1", "HOST:PORT"),
        ("tcp://127.0.0.1:99999", "port must be"),
        ("tcp://127.0.0.1:http", "port must be"),
        ("tcp://[zz]:1", "not an IPv6"),
        ("tcp://:5", "HOST:PORT"),
    ],
)
def test_invalid_addresses_say_what_is_wrong(text: str, complaint: str) -> None:
    with pytest.raises(AddressError, match=complaint) as info:
        parse_address(text)
    assert repr(text)[:20] in str(info.value) or "scheme" in str(info.value)
