"""Nodes on several hosts: two network namespaces joined by a veth pair (tests/netns.py),
one node in each (tests/host_node.py), talking over tls+tcp with certificates made here.

Shown: calls and streams across hosts; `tc netem` delay raises the round trip the
heartbeats measure; an iptables DROP partition fails the call in flight with NodeDown
within the heartbeat timeout, new calls at once, and the link heals when the rules go; a
peer with a certificate from another CA, or plain tcp, is refused and the refusal logged.
Skipped, with the reason, where namespaces cannot be made (not root, no `ip`); the netem
test where the kernel lacks netem, the partition where iptables is missing.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import netns
from tests.conftest import REPO
from tests.policy_support import TLSFiles, make_tls

DOWN_AFTER_S = 1.5  # tests/host_node.py's default (heartbeats every 0.25 s)


class HostNode:
    """A node process inside a namespace; `ask` sends one command and waits for its answer
    (events of background calls are kept aside for `wait_event`)."""

    def __init__(self, ns: str, name: str, log: Path, *options: str) -> None:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.host_node"]
        self.log = log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen(
            [*argv, "--name", name, *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            cwd=REPO,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self.events: dict[str, dict[str, Any]] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)

    def next_answer(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"no answer in {timeout_s}s; log: {self.log_text()}") from None
            answer = json.loads(line)
            if "event" not in answer:
                return answer
            self.events[answer["event"]] = answer

    def ask(self, timeout_s: float = 10, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.next_answer(timeout_s)

    def wait_event(self, ident: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while ident not in self.events and time.monotonic() < deadline:
            try:
                answer = json.loads(self._lines.get(timeout=0.05))
            except queue.Empty:
                continue
            if "event" in answer:
                self.events[answer["event"]] = answer
        if ident not in self.events:
            raise TimeoutError(f"no outcome of {ident!r} in {timeout_s}s")
        return self.events[ident]

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the node leaves when its stdin closes
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._log_file.close()


def poll(condition: Any, timeout_s: float, every_s: float = 0.1) -> Any:
    """`condition()` until it is truthy (returned) or `timeout_s` passes (the last value)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


@pytest.fixture(scope="module")
def hosts() -> Iterator[netns.Hosts]:
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    made = netns.Hosts()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def tls(hosts: netns.Hosts, tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    # The dialing side checks the listener's certificate against the address it dials.
    return make_tls(tmp_path_factory.mktemp("cluster-ca"), extra_sans=[hosts.address_a])


@pytest.fixture
def nodes(hosts: netns.Hosts, tls: TLSFiles, tmp_path: Path) -> Iterator[tuple[HostNode, ...]]:
    """Node "a" on host a (serving an echo actor), node "b" on host b, joined."""
    started: list[HostNode] = []
    try:
        a = HostNode(
            hosts.ns_a,
            "a",
            tmp_path / "a.log",
            "--serve",
            f"tls+tcp://{hosts.address_a}:0",
            "--tls",
            f"{tls.ca},{tls.cert},{tls.key}",
        )
        started.append(a)
        door = a.next_answer(20)["door"]
        client = f"{tls.ca},{tls.client_cert},{tls.client_key}"
        b = HostNode(hosts.ns_b, "b", tmp_path / "b.log", "--tls", client)
        started.append(b)
        assert b.ask(op="join", address=door, timeout_s=20) == {"ok": True}
        yield a, b
    finally:
        for node in started:
            node.close()


def test_calls_cross_hosts_over_mutual_tls(hosts: netns.Hosts, nodes: tuple[HostNode, ...]):
    a, b = nodes
    assert b.ask(op="call", text="across hosts")["ok"] == "across hosts"
    assert b.ask(op="stream", n=3) == {"ok": [0, 1, 2]}
    link = poll(lambda: (state := b.ask(op="link"))["rtt"] and state, 5)
    assert link["up"] and 0 < link["rtt"] < 0.05, link
    assert f"joined through tls+tcp://{hosts.address_a}:" in a.log_text()


def test_netem_delay_raises_the_round_trip(hosts: netns.Hosts, nodes: tuple[HostNode, ...]):
    why = hosts.netem_unavailable()
    if why:
        pytest.skip(why)
    a, b = nodes
    base = poll(lambda: b.ask(op="link")["rtt"], 5)
    assert 0 < base < 0.05
    qdisc = ("tc", "qdisc", "add", "dev", hosts.dev_a, "root", "netem", "delay", "100ms")
    hosts.exec(hosts.ns_a, *qdisc)  # a's side sends everything 100 ms late
    try:
        delayed = poll(lambda: (rtt := b.ask(op="link")["rtt"]) >= 0.09 and rtt, 5)
        assert 0.09 <= delayed < 0.5, f"round trip {delayed} with 100 ms of netem"
        assert b.ask(op="call", text="slow")["elapsed"] >= 0.09
    finally:
        hosts.exec(hosts.ns_a, "tc", "qdisc", "del", "dev", hosts.dev_a, "root", check=False)
    healed = poll(lambda: (rtt := b.ask(op="link")["rtt"]) < 0.05 and rtt, 5)
    assert 0 < healed < 0.05
    print(f"round trip: {base * 1000:.2f} ms, {delayed * 1000:.1f} ms with netem 100ms")


def test_partition_fails_calls_in_flight_within_the_heartbeat_timeout_and_heals(
    hosts: netns.Hosts, nodes: tuple[HostNode, ...]
) -> None:
    why = hosts.iptables_unavailable()
    if why:
        pytest.skip(why)
    a, b = nodes
    # 5 s: long enough to be in flight at the partition, short enough that a's echo actor
    # (one message at a time) has finished it when the healed link is used.
    assert b.ask(op="sleep_call", id="slow", seconds=5) == {"ok": True}
    time.sleep(0.5)  # the call is in a's echo actor
    rules = [("INPUT", "-s"), ("OUTPUT", "-d")]
    for chain, side in rules:  # inside a's namespace only
        hosts.exec(hosts.ns_a, "iptables", "-A", chain, side, hosts.address_b, "-j", "DROP")
    partitioned = time.monotonic()
    try:
        failed = b.wait_event("slow", DOWN_AFTER_S + 5)
        assert failed["error"] == "NodeDown", failed
        took = failed["t"] - partitioned
        assert took < DOWN_AFTER_S + 1.0, f"the call failed {took:.2f}s into the partition"
        refused = b.ask(op="call", text="anyone?")  # new calls fail at once
        assert refused["error"] == "NodeDown" and "is down" in refused["message"]
    finally:
        for chain, side in rules:
            hosts.exec(
                hosts.ns_a, "iptables", "-D", chain, side, hosts.address_b, "-j", "DROP",
                check=False,
            )  # fmt: skip
    lifted = time.monotonic()
    back = b.ask(op="wait_up", timeout=30, timeout_s=35)  # TCP retransmits with back-off
    assert back["ok"], back
    healed = b.ask(op="call", text="healed", timeout=10, timeout_s=15)
    assert healed.get("ok") == "healed", (healed, b.log_text())
    print(f"NodeDown {took:.2f}s into the partition; up again {back['t'] - lifted:.2f}s after")


def test_a_peer_that_cannot_authenticate_is_refused_and_logged(
    hosts: netns.Hosts, nodes: tuple[HostNode, ...], tmp_path: Path
) -> None:
    a, b = nodes
    other = make_tls(tmp_path, extra_sans=[hosts.address_b])  # another CA
    door = f"tls+tcp://{hosts.address_a}"
    port = a.log_text().split(f"door open at {door}:")[1].split()[0]
    strangers = [
        HostNode(
            hosts.ns_b,
            "x",
            tmp_path / "x.log",
            "--tls",
            f"{other.ca},{other.client_cert},{other.client_key}",
        ),
        HostNode(hosts.ns_b, "y", tmp_path / "y.log", "--insecure"),
    ]
    try:
        for count, (stranger, address) in enumerate(
            zip(strangers, (f"{door}:{port}", f"tcp://{hosts.address_a}:{port}"), strict=True),
            start=1,
        ):
            answer = stranger.ask(op="join", address=address, timeout_s=15)
            assert answer["error"] == "JoinFailed", answer
            # a's side: nng refused it in the handshake, a's node logs it from nng's counter
            # (one at a time: nng counts two refusals within milliseconds as one)
            assert poll(lambda c=count: a.ask(op="refused")["refused"] >= c, 5), a.log_text()
    finally:
        for stranger in strangers:
            stranger.close()
    assert "refused 1 peer(s)" in a.log_text()
    assert b.ask(op="call", text="still here")["ok"] == "still here"  # members unaffected
