"""Transport addresses: the schemes nng speaks that InferFlux uses.

An address is parsed once, up front, so a typo in a config file fails at start-up with a
message that names the bad value, not deep inside nng with "invalid argument".
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
import uuid
from typing import Literal

import msgspec

Scheme = Literal["inproc", "ipc", "tcp", "tls+tcp"]


class AddressError(ValueError):
    """An address string that is not one of inproc://NAME, ipc:///PATH, tcp://HOST:PORT,
    tls+tcp://HOST:PORT."""


class Address(msgspec.Struct, frozen=True):
    """A parsed transport address. `str(address)` gives back the nng URL."""

    scheme: Scheme
    name: str = ""  # inproc
    path: str = ""  # ipc: absolute filesystem path
    host: str = ""  # tcp
    port: int = 0  # tcp; 0 asks the OS for a free port when listening

    def __str__(self) -> str:
        if self.scheme == "inproc":
            return f"inproc://{self.name}"
        if self.scheme == "ipc":
            return f"ipc://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_HINT = "expected inproc://NAME, ipc:///ABSOLUTE/PATH, tcp://HOST:PORT or tls+tcp://HOST:PORT"
# Linux limits a unix socket path (sun_path) to 108 bytes including the NUL.
_MAX_IPC_PATH = 107


def parse_address(text: str) -> Address:
    """Parse and validate an address string; raise AddressError saying what is wrong."""
    if not isinstance(text, str):
        raise AddressError(f"address must be a string, got {text!r}; {_HINT}")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise AddressError(f"{text!r} has no scheme; {_HINT}")
    if scheme == "inproc":
        if not rest or any(c.isspace() for c in rest):
            raise AddressError(f"{text!r}: inproc name must be non-empty, no spaces; {_HINT}")
        return Address("inproc", name=rest)
    if scheme == "ipc":
        if not rest.startswith("/"):
            raise AddressError(f"{text!r}: ipc path must be absolute (ipc:///tmp/x.sock); {_HINT}")
        if len(rest.encode()) > _MAX_IPC_PATH:
            raise AddressError(
                f"{text!r}: ipc path is {len(rest.encode())} bytes, the OS limit is {_MAX_IPC_PATH}"
            )
        return Address("ipc", path=rest)
    if scheme in ("tcp", "tls+tcp"):
        parsed = _parse_tcp(text, rest)
        return Address(scheme, host=parsed.host, port=parsed.port)
    raise AddressError(f"{text!r}: unknown scheme {scheme!r}; {_HINT}")


def _parse_tcp(text: str, rest: str) -> Address:
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise AddressError(f"{text!r}: IPv6 form is tcp://[::1]:PORT")
        port_text = port_text[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise AddressError(f"{text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon or not host:
            raise AddressError(f"{text!r}: tcp address needs HOST:PORT; {_HINT}")
        if "/" in host or any(c.isspace() for c in host):
            raise AddressError(f"{text!r}: {host!r} is not a host name")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise AddressError(f"{text!r}: port must be 0-65535, got {port_text!r}")
    return Address("tcp", host=host, port=int(port_text))


def unique_address(
    scheme: Scheme, label: str = "inferflux", directory: str | None = None
) -> Address:
    """A fresh address nobody else is using, for links between parent and child actors
    (an ipc socket in `directory`, a private SocketDir, else the temp directory)."""
    tag = f"{label}-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    if scheme == "inproc":
        return Address("inproc", name=tag)
    if scheme == "ipc":
        path = os.path.join(directory or tempfile.gettempdir(), f"{tag}.sock")
        if len(path.encode()) > 107:
            raise AddressError(f"socket path too long for a unix socket: {path}")
        return Address("ipc", path=path)
    return Address("tcp", host="127.0.0.1", port=0)
