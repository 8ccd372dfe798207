"""Which GPUs each device worker of a node uses (`--workers N` on a multi-GPU host).

One worker sees every GPU of the node, and llama.cpp splits the model's layers over them.
With several workers, each would otherwise load the model onto the same GPUs and fight
over them; so the node's GPUs are dealt out: N workers on N GPUs get one each, fewer
workers than GPUs get contiguous groups (llama.cpp splits each worker's layers over its
group), more workers than GPUs share them round robin.

A worker is confined through CUDA_VISIBLE_DEVICES in its process's environment, set
before CUDA starts there; the server's own process never initialises CUDA. The node's
GPUs are those its own CUDA_VISIBLE_DEVICES names (a container runtime or scheduler may
have set it), else those `nvidia-smi` lists; on a host with neither, nothing is set.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping

VISIBLE = "CUDA_VISIBLE_DEVICES"


def node_gpus(environ: Mapping[str, str]) -> list[str]:
    """The GPUs this node may use, as CUDA_VISIBLE_DEVICES entries (indexes or UUIDs)."""
    if VISIBLE in environ:  # set, even empty (no GPU at all): the node's own choice
        return [gpu.strip() for gpu in environ[VISIBLE].split(",") if gpu.strip()]
    smi = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if smi is None:
        return []
    try:
        listed = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:  # a driver that is not loaded: no usable GPU
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip().isdigit()]


def worker_gpus(gpus: list[str], worker: int, workers: int) -> list[str]:
    """The GPUs of worker `worker` (0-based) of `workers`."""
    if not gpus:
        return []
    if workers <= len(gpus):  # contiguous groups, the first ones one larger if uneven
        base, extra = divmod(len(gpus), workers)
        start = worker * base + min(worker, extra)
        return gpus[start : start + base + (1 if worker < extra else 0)]
    return [gpus[worker % len(gpus)]]


def worker_environment(
    environment: dict[str, str], gpus: list[str], worker: int, workers: int
) -> dict[str, str]:
    """A worker's environment: `environment`, confined to its GPUs when it has company."""
    if workers < 2 or not gpus:
        return environment
    return {**environment, VISIBLE: ",".join(worker_gpus(gpus, worker, workers))}
