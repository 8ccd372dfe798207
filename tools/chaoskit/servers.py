"""The servers a chaos run drives: an `inferflux run --chaos` process, and with --disagg a
prefill node started again at the same door after each SIGKILL; the process and socket
leftovers the final checks look for."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx

from actors import fetch_snapshot
from actors._info import ActorInfo
from inferflux.testing import free_port, stop_process


class Server:
    def __init__(
        self, log_path: str, extra_env: dict[str, str], isolate: str = "", *extra: str
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        command = [sys.executable, "-m", "inferflux", "run", "--chaos", "--port", str(self.port)]
        command += ["--n-parallel", "4", "--ctx-size", "512", *extra]
        command += ["--isolate", isolate] if isolate else []
        # Poison detection off: this nemesis kills workers at random, which to any detector
        # looks like a request crashing them (the scheduler's docstring).
        env = dict(os.environ, INFERFLUX_SUPERVISION_POISON_CRASHES="0", **extra_env)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.introspection = ""

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_path}")
            match = re.search(r"actor tree at (\S+)", open(self.log_path).read())
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and match:
                self.introspection = match.group(1)
                return
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout_s}s; see {self.log_path}")

    def snapshot(self) -> ActorInfo:
        return fetch_snapshot(self.introspection)

    def stop(self) -> int:
        stop_process(self.process, 60)
        self.log.close()
        return self.process.returncode


# --disagg: the server is a decode node; every fresh prompt (min_prefill_tokens 1) goes to a
# prefill node, which the nemesis SIGKILLs (and starts again at the same door) or SIGSTOPs
# past the heartbeat timeout. Either must cost a local prefill: the same text, no error.
DISAGG_ENV = {
    "INFERFLUX_CLUSTER_MIN_PREFILL_TOKENS": "1",
    "INFERFLUX_CLUSTER_HEARTBEAT_S": "0.25",
    "INFERFLUX_CLUSTER_DOWN_AFTER_S": "1.5",
}


class PrefillNode:
    """The prefill node of --disagg, started again at the same door after each SIGKILL."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.door = f"tcp://127.0.0.1:{free_port()}"
        self.starts = 0
        self.pids: set[int] = set()
        self.server = self._start()

    def _start(self) -> Server:
        self.starts += 1
        log = f"{self.log_path}.prefill-{self.starts}"
        server = Server(log, DISAGG_ENV, "", "--role", "prefill", "--cluster-listen", self.door)
        server.wait_ready()
        self.pids |= process_pids(server.snapshot())
        return server

    def kill_and_restart(self) -> None:
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.stop()
        self.server = self._start()


def ipc_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "*inferflux*.sock")))


def process_pids(tree: ActorInfo) -> set[int]:
    """The pids of every process actor (the worker, and the isolated scheduler/policy)."""
    return {info.pid for info in tree.walk() if info.kind == "process" and info.pid}


def worker_pids_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if re.search(rb"inferflux-(worker|scheduler|policy)", f.read()):
                    alive.add(pid)
        except OSError:
            pass
    return alive
