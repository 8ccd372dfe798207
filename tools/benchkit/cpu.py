"""CPU time per streamed token, by process, read from /proc (Linux): a server's main
process (for InferFlux: the ingress, the scheduler and the policy), its child processes
(InferFlux's device workers; llama-server has none), and this benchmark's own client.

On a machine whose cores llama.cpp's threads already fill, every millisecond the serving
work and the client spend is taken from llama.cpp: these columns say where it goes."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(child) for child in f.read().split()]
        except OSError:
            pass
    return found


def _descendants(pid: int) -> list[int]:
    found, todo = [], _children(pid)
    while todo:
        child = todo.pop()
        found.append(child)
        todo += _children(child)
    return found


@dataclass
class CpuSnapshot:
    server_s: float
    children: dict[int, float]  # pid -> CPU seconds
    client_s: float

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSnapshot:
        if server_pid is None:
            return cls(0.0, {}, time.process_time())
        children = {pid: _cpu_s(pid) for pid in _descendants(server_pid)}
        return cls(_cpu_s(server_pid), children, time.process_time())

    def per_token_ms(self, before: CpuSnapshot, tokens: int) -> dict[str, float]:
        """CPU milliseconds per token since `before`. A child that started since counts
        from zero; one that ended since is missed (a benchmark kills nothing)."""
        if tokens <= 0:
            return {}
        children = sum(s - before.children.get(pid, 0.0) for pid, s in self.children.items())
        return {
            "cpu_server_ms": 1000 * (self.server_s - before.server_s) / tokens,
            "cpu_children_ms": 1000 * children / tokens,
            "cpu_client_ms": 1000 * (self.client_s - before.client_s) / tokens,
        }
