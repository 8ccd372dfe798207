"""The chaos harness's invariants: one terminal outcome per request equal to its
reference, a quiescent and healthy tree afterwards, both prefill paths used."""

from __future__ import annotations

import json
import time

import httpx

from .jobs import Job, Outcome
from .servers import PrefillNode, Server


def summarize(faults: list[str]) -> str:
    counts: dict[str, int] = {}
    for f in faults:
        key = f.split("(")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def check_job(job: Job, outcomes: list[Outcome], ref: Outcome | None) -> list[str]:
    if len(outcomes) != 1:
        return [f"request {job.index}: {len(outcomes)} terminal outcomes"]
    got = outcomes[0]
    if got.kind == "error":
        return [f"request {job.index}: error {got.detail}"]
    if got.kind == "hung_up" or ref is None:
        return []
    if got.text == ref.text and got.completion_tokens == ref.completion_tokens:
        if got.finish_reason != ref.finish_reason:
            return [f"request {job.index}: finish {got.finish_reason} != {ref.finish_reason}"]
        if "response_format" in job.sampling and got.finish_reason == "stop":
            try:
                json.loads(got.text)
            except ValueError:
                return [f"request {job.index}: constrained output is not JSON: {got.text!r}"]
        return []
    kind = "lost" if len(got.text) < len(ref.text) else "dup"
    return [
        f"{kind} tokens in request {job.index} ({got.completion_tokens} vs {ref.completion_tokens}"
        f" tokens): got {got.text[:80]!r}... expected {ref.text[:80]!r}..."
    ]


def check_disagg(server: Server, prefill: PrefillNode) -> list[str]:
    """Both paths ran: prompts computed on the prefill node, and local prefills after its
    failures (and no prefill node left stuck on anything)."""
    paths: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("inferflux:disagg_requests_total{"):
            paths[line.split('path="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    print(f"chaos: prompts computed by path: {paths}; prefill node started {prefill.starts}x")
    problems = []
    if not paths.get("remote"):
        problems.append("no prompt was computed on the prefill node")
    tree = prefill.server.snapshot()
    scheduler = tree.find("scheduler")
    if scheduler is None or scheduler.details.get("running") or scheduler.details.get("waiting"):
        problems.append(f"prefill node not quiescent: {scheduler and scheduler.details}")
    return problems


def check_quiescence(server: Server) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        tree = server.snapshot()
        scheduler = tree.find("scheduler")
        worker = tree.find("worker-0")
        busy = (
            scheduler is None
            or scheduler.details.get("running")
            or scheduler.details.get("waiting")
        )
        if not busy and worker is not None and worker.state == "running":
            break
        if time.monotonic() > deadline:
            return [
                f"not quiescent 30 s after the load: scheduler {scheduler and scheduler.details}"
            ]
        time.sleep(0.5)
    problems = []
    engine = tree.find("engine")
    # A supervisor its parent restarted gave up: more restarts than its intensity allows.
    for info in tree.walk():
        if info.kind == "supervisor" and info.restarts and info is not tree:
            problems.append(f"supervisor {info.name!r} gave up {info.restarts} time(s)")
    if tree.state != "running" or engine is None or engine.state != "running":
        problems.append(
            f"tree not healthy at the end: root {tree.state}, engine {engine and engine.state}"
        )
    return problems
