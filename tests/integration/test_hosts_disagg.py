"""Disaggregated prefill/decode across hosts (issue 14): a prefill node in one network
namespace, a decode node in another (tests/netns.py: a veth pair, addresses only inside
the namespaces made here), joined over tls+tcp with the cluster CA. The official client,
run on the decode node's host, gets the text a unified server gives (the KV state pulled
across in checksummed chunks by the decode node's kvcache); an iptables DROP
partition between them costs a local prefill (same text, no error), and the prefill
node is used again after the partition heals. Skipped, with the reason, where
namespaces or iptables are missing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inferflux.testing import stop_process
from tests import netns
from tests.conftest import MODEL_ID, REPO, RunningServer, start_server, stop_server
from tests.integration.test_disagg import SETTINGS, prompt
from tests.policy_support import make_tls

pytestmark = pytest.mark.model

PREFILL_PORT = 7400  # inside host a's namespace: nothing else listens there
HTTP_PORT = 8000  # inside each namespace

# The client, run inside host b's namespace (the decode node's HTTP port is only there).
CLIENT = """
import json, sys, httpx, openai
url, model, text = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
reply = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": text}], max_tokens=40, temperature=0
)
paths = {}
for line in httpx.get(url + "/metrics").text.splitlines():
    if line.startswith("inferflux:disagg_requests_total{"):
        paths[line.split('path="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
def find(info, name):
    if info["name"] == name:
        return info
    return next((f for c in info.get("children", []) if (f := find(c, name))), None)
kvcache = find(httpx.get(url + "/debug/actors").json(), "kvcache")["details"]
print(json.dumps({"text": reply.choices[0].message.content, "paths": paths, "kvcache": kvcache}))
"""


class NamespacedServer:
    """`inferflux run` inside a namespace, ready once its log says it serves."""

    def __init__(self, hosts: netns.Hosts, ns: str, log: Path, *args: str) -> None:
        self.hosts, self.ns, self.log = hosts, ns, log
        self._log_file = open(log, "w")
        command = [sys.executable, "-m", "inferflux", "run", "--port", str(HTTP_PORT), *args]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, *command],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.wait_for_log("serving ", 120)

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log.read_text():
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def ask(self, text: str) -> dict:
        url = f"http://127.0.0.1:{HTTP_PORT}"
        done = self.hosts.exec(self.ns, sys.executable, "-c", CLIENT, url, MODEL_ID, text)
        return json.loads(done.stdout)

    def close(self) -> None:
        stop_process(self.process)
        self._log_file.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    why = netns.unavailable()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("hosts-disagg")
    hosts = netns.Hosts()
    started: list[NamespacedServer] = []
    unified: RunningServer | None = None
    try:
        tls = make_tls(tmp, extra_sans=[hosts.address_a])
        common = "[cluster]\nmin_prefill_tokens = 64\nheartbeat_s = 0.25\ndown_after_s = 1.5\n"
        for name, cert, key in (("a", tls.cert, tls.key), ("b", tls.client_cert, tls.client_key)):
            files = f'ca_file = "{tls.ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
            (tmp / f"{name}.toml").write_text(common + files)
        # The prefill node listens on every interface of its host (as in a pod), the decode
        # node knocks at its address: the link address the door answers is the wildcard,
        # which the decode node must read as "the host I knocked at".
        listen = f"tls+tcp://0.0.0.0:{PREFILL_PORT}"
        door = f"tls+tcp://{hosts.address_a}:{PREFILL_PORT}"
        prefill = NamespacedServer(
            hosts, hosts.ns_a, tmp / "prefill.log", *SETTINGS,
            "--role", "prefill", "--cluster-listen", listen, "--config", str(tmp / "a.toml"),
        )  # fmt: skip
        started.append(prefill)
        decode = NamespacedServer(
            hosts, hosts.ns_b, tmp / "decode.log", *SETTINGS,
            "--role", "decode", "--prefill", door, "--config", str(tmp / "b.toml"),
        )  # fmt: skip
        started.append(decode)
        decode.wait_for_log("joined as prefill-0", 30)
        unified = start_server(str(tmp), *SETTINGS)
        yield hosts, prefill, decode, unified
    finally:
        if unified is not None:
            stop_server(unified)
        for server in started:
            server.close()
        hosts.close()


def reference(unified: RunningServer, text: str) -> str:
    client = openai.OpenAI(base_url=f"{unified.url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": text}], max_tokens=40, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_prefill_on_another_host_gives_the_unified_text_and_survives_a_partition(cluster):
    hosts, prefill, decode, unified = cluster
    first = decode.ask(prompt("a harbour at dawn"))
    assert first["text"] == reference(unified, prompt("a harbour at dawn"))
    assert first["paths"].get("remote") == 1
    # Another host (another mount namespace): the state was pulled, in chunks, not mapped.
    assert first["kvcache"]["pulled"] == 1 and first["kvcache"]["pulled_bytes"] > 1_000_000
    why = hosts.iptables_unavailable()
    if why:
        pytest.skip(why)
    drop = ("INPUT", "-s", hosts.address_b, "-j", "DROP")
    hosts.exec(hosts.ns_a, "iptables", "-A", *drop)
    try:
        started = time.monotonic()
        cut = decode.ask(prompt("a desert road"))
        took = time.monotonic() - started
    finally:
        hosts.exec(hosts.ns_a, "iptables", "-D", *drop)
    assert cut["text"] == reference(unified, prompt("a desert road"))
    assert cut["paths"].get("fallback") == 1 and cut["paths"].get("remote") == 1
    assert took < 1.5 + 10, took  # the heartbeat timeout, then a local prefill
    # Healed: after the failed peer's 10 s, the prefill node is used again.
    time.sleep(10)
    healed = decode.ask(prompt("a quiet library"))
    assert healed["text"] == reference(unified, prompt("a quiet library"))
    assert healed["paths"].get("remote") == 2
