"""Several hosts on one machine: network namespaces joined by a veth pair.

`Hosts()` makes two namespaces, `ifxt-PID-a` and `ifxt-PID-b`, and one veth pair whose
ends are moved into them at once (so no interface of the host's own namespace is ever
configured), with addresses in 10.231.N.0/24 (N from the pid, so concurrent runs do not
meet) that exist only inside those namespaces. `close()` (also run at exit, and for
namespaces of test runs that died) deletes the namespaces, which takes the veth ends,
their qdiscs and the iptables rules made inside them along.

Why namespaces and not containers: they need only `ip` and root, start in milliseconds,
and a test can break the network between them (tc netem, iptables) without touching the
machine's own.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess

PREFIX = "ifxt-"
COMMAND_TIMEOUT_S = 10


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=check
    )


def unavailable() -> str:
    """Why namespaces cannot be made here ("" when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return ""


def remove_stale() -> None:
    """Namespaces left by test runs that were killed before cleaning up."""
    listed = run("ip", "netns", "list", check=False).stdout
    for name in re.findall(rf"^({PREFIX}(\d+)-\w+)", listed, re.MULTILINE):
        pid = int(name[1])
        if pid != os.getpid() and not os.path.exists(f"/proc/{pid}"):
            run("ip", "netns", "del", name[0], check=False)


class Hosts:
    """Two hosts, `a` and `b`, on one link: a at `address_a`, b at `address_b`."""

    def __init__(self) -> None:
        tag = f"{PREFIX}{os.getpid()}"
        subnet = 1 + os.getpid() % 250
        self.ns_a, self.ns_b = f"{tag}-a", f"{tag}-b"
        self.dev_a, self.dev_b = f"ifxv{os.getpid() % 100000}a", f"ifxv{os.getpid() % 100000}b"
        self.address_a, self.address_b = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self._closed = False
        remove_stale()
        atexit.register(self.close)
        try:
            self._build(subnet)
        except BaseException:
            self.close()
            raise

    def _build(self, subnet: int) -> None:
        for ns in (self.ns_a, self.ns_b):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # Created and moved in one command each: the ends never sit in the host's
        # namespace long enough to be configured there.
        run(
            "ip", "link", "add", self.dev_a, "netns", self.ns_a,
            "type", "veth", "peer", "name", self.dev_b, "netns", self.ns_b,
        )  # fmt: skip
        for ns, dev, address in (
            (self.ns_a, self.dev_a, self.address_a),
            (self.ns_b, self.dev_b, self.address_b),
        ):
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")

    def exec(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside namespace `ns`."""
        return run("ip", "netns", "exec", ns, *argv, check=check)

    def netem_unavailable(self) -> str:
        """Why `tc netem` cannot be used here ("" when it can): not every kernel has it."""
        if shutil.which("tc") is None:
            return "no `tc` command (iproute2)"
        added = self.exec(
            self.ns_a, "tc", "qdisc", "add", "dev", self.dev_a, "root", "netem", "delay", "1ms",
            check=False,
        )  # fmt: skip
        if added.returncode != 0:
            return f"tc netem is not available in this kernel: {added.stderr.strip()}"
        self.exec(self.ns_a, "tc", "qdisc", "del", "dev", self.dev_a, "root", check=False)
        return ""

    def iptables_unavailable(self) -> str:
        if shutil.which("iptables") is None:
            return "no `iptables` command"
        listed = self.exec(self.ns_a, "iptables", "-S", check=False)
        if listed.returncode != 0:
            return f"iptables does not work here: {listed.stderr.strip()}"
        return ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Deleting a namespace takes its veth end (and so the pair), its qdiscs and its
        # iptables rules with it.
        for ns in (self.ns_a, self.ns_b):
            run("ip", "netns", "del", ns, check=False)
        atexit.unregister(self.close)
