"""Servers under test: how each is started, waited for and stopped.

Peers run as their docs say, plus what this machine needs: llama-server with `-np 16
-c 16*ctx -nr` and llama-cpp-python's server through tools/peers/ (both with llama.cpp's
weight repacking off, which crashes on the Intel/AMX machines this was first measured
on), `--interrupt_requests False`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx

from inferflux.testing import free_port, stop_process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOP_HEADLESS = (
    "import sys; from inferflux.top_app import TopApp; TopApp(sys.argv[1], 1.0).run(headless=True)"
)


@dataclass
class Target:
    name: str
    command: list[str]
    port: int
    model: str = "default"
    extra_body: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    shared_prefix: bool = True  # also run the shared-prefix workload against it
    process: subprocess.Popen | None = None
    with_top: bool = False  # run the inferflux-top UI (headless, 1 s polls) against it
    cwd: str = REPO  # InferFlux runs from the source tree it is started in
    top: subprocess.Popen | None = None
    probe: str = "/v1/models"  # ready when this answers 200 ("/readyz": a prefill node)

    @property
    def is_inferflux(self) -> bool:
        return self.name.startswith("inferflux")

    def start(self, log_dir: str) -> None:
        log = open(os.path.join(log_dir, f"{self.name.replace(' ', '_')}.log"), "w")
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {log.name}"
                )
            try:
                if self.probe != "/v1/models":
                    if httpx.get(f"http://127.0.0.1:{self.port}{self.probe}").status_code == 200:
                        return
                    time.sleep(0.5)
                    continue
                models = httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2)
                if models.status_code == 200:
                    self.model = models.json()["data"][0]["id"]
                    if self.with_top:
                        self.top = subprocess.Popen(
                            [sys.executable, "-c", TOP_HEADLESS, f"http://127.0.0.1:{self.port}"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            cwd=REPO,
                        )
                    return
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start in 180 s")

    def stop(self) -> None:
        if self.top is not None:
            self.top.kill()
            self.top.wait()
        if self.process is not None:  # the server and whatever it started
            stop_process(self.process, 30, group=True)


def _inferflux(
    name: str, args: argparse.Namespace, *extra: str, env: dict | None = None, **kw
) -> Target:
    port = free_port()
    command = [sys.executable, "-m", "inferflux", "run", "--port", str(port), *extra]
    command += ["--n-parallel", "16", "--ctx-size", str(args.ctx_size)]
    command += ["--threads", str(args.threads)]
    return Target(name, command, port, env=env or {}, **kw)


def _llama_server(name: str, binary: str, args: argparse.Namespace, model_path: str, *extra: str):
    port = free_port()
    command = [binary, "-m", model_path, "-np", "16", "-c", str(16 * args.ctx_size)]
    command += ["-t", str(args.threads), "-nr", "--port", str(port), *extra]
    return Target(name, command, port)


SPEC_ON = {"INFERFLUX_SPECULATIVE_ENABLED": "true"}
SPEC_OFF = {"INFERFLUX_SPECULATIVE_ENABLED": "false"}


def targets(args: argparse.Namespace, model_path: str) -> list[Target]:
    """The servers this run measures, in the order they run (each alone)."""
    found = []
    if args.speculative == "both":
        found.append(_inferflux("inferflux (speculative off)", args, env=SPEC_OFF))
        found.append(_inferflux("inferflux (speculative on)", args, env=SPEC_ON))
    else:
        env = {"on": SPEC_ON, "off": SPEC_OFF}.get(args.speculative, {})
        found.append(_inferflux("inferflux", args, env=env))
    if args.baseline:
        found.append(
            _inferflux(
                "inferflux (baseline)",
                args,
                cwd=os.path.abspath(args.baseline),
                shared_prefix=False,
            )
        )
    if args.with_top:
        found.append(_inferflux("inferflux + inferflux-top", args, with_top=True))
    if args.prefix_off:
        found.append(_inferflux("inferflux (no prefix cache)", args, "--no-prefix-cache"))
    llama_server = os.environ.get("LLAMA_SERVER")
    if llama_server:
        found.append(_llama_server("llama-server", llama_server, args, model_path))
        for spec_type in args.llama_spec:
            found.append(
                _llama_server(
                    f"llama-server {spec_type}",
                    llama_server,
                    args,
                    model_path,
                    "--spec-type",
                    spec_type,
                )
            )
            found[-1].shared_prefix = False
    if not args.skip_llama_cpp_python:
        port = free_port()
        command = [sys.executable, os.path.join(REPO, "tools/peers/llama_cpp_python_server.py")]
        command += ["--model", model_path, "--interrupt_requests", "False"]
        command += ["--n_ctx", str(args.ctx_size), "--n_threads", str(args.threads)]
        command += ["--port", str(port)]
        found.append(Target("llama-cpp-python", command, port, shared_prefix=False))
    return found
