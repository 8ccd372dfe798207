"""nng's own counters for one listener or dialer (nng_stats_get).

Why read them: some refusals happen inside nng where no callback sees them. A peer whose
TLS handshake fails (a certificate from another CA, or plain tcp knocking on a tls door)
never becomes a pipe, so the only trace is the endpoint's `auth` counter. A caller polls
these and logs what changed.
"""

from __future__ import annotations

from typing import Any

import pynng

ffi, lib = pynng.ffi, pynng.lib


def endpoint_counters(endpoint: Any) -> dict[str, int]:
    """The counters of a pynng Listener or Dialer: `accept` / `connect`, `auth` (peers
    refused by authentication: the TLS handshake), `proto`, `reject`, `disconnect`...;
    empty when nng has none for it (the endpoint is closed)."""
    snapshot = ffi.new("nng_stat **")
    if lib.nng_stats_get(snapshot) != 0:
        return {}
    try:
        if isinstance(endpoint, pynng.Listener):
            found = lib.nng_stat_find_listener(snapshot[0], endpoint.listener)
        else:
            found = lib.nng_stat_find_dialer(snapshot[0], endpoint.dialer)
        counters: dict[str, int] = {}
        child = lib.nng_stat_child(found) if found != ffi.NULL else ffi.NULL
        while child != ffi.NULL:
            if lib.nng_stat_type(child) == lib.NNG_STAT_COUNTER:
                name = ffi.string(lib.nng_stat_name(child)).decode()
                counters[name] = int(lib.nng_stat_value(child))
            child = lib.nng_stat_next(child)
        return counters
    finally:
        lib.nng_stats_free(snapshot[0])
