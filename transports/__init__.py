"""Wire layer: addresses, the msgspec codec, and nng channels. Knows nothing of actors."""

from ._address import Address, AddressError, parse_address, unique_address
from ._channel import (
    DEFAULT_RECV_MAX_SIZE,
    TLS,
    Channel,
    ChannelClosed,
    LinkBroken,
    PeerEvent,
    SendTimeout,
)
from ._codec import Codec, MessageDecodeError
from ._faults import Faults
from ._socket_dir import SocketDir
from ._stats import endpoint_counters

__all__ = [
    "DEFAULT_RECV_MAX_SIZE",
    "Address",
    "AddressError",
    "Channel",
    "ChannelClosed",
    "Codec",
    "Faults",
    "LinkBroken",
    "MessageDecodeError",
    "PeerEvent",
    "SendTimeout",
    "SocketDir",
    "TLS",
    "endpoint_counters",
    "parse_address",
    "unique_address",
]
