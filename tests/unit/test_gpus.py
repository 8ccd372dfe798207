"""How a node's GPUs are dealt out among its device workers (serving/gpus.py)."""

from __future__ import annotations

import os
import stat

import pytest

from inferflux.serving.gpus import node_gpus, worker_environment, worker_gpus


@pytest.mark.parametrize(
    ("gpus", "workers", "expected"),
    [
        (["0", "1"], 2, [["0"], ["1"]]),
        (["0", "1", "2", "3"], 2, [["0", "1"], ["2", "3"]]),
        (["0", "1", "2"], 2, [["0", "1"], ["2"]]),
        (["4", "6", "7", "1", "2"], 3, [["4", "6"], ["7", "1"], ["2"]]),
        (["0", "1"], 5, [["0"], ["1"], ["0"], ["1"], ["0"]]),
        ([], 3, [[], [], []]),
    ],
)
def test_workers_get_contiguous_groups_or_share_round_robin(
    gpus: list[str], workers: int, expected: list[list[str]]
) -> None:
    assert [worker_gpus(gpus, i, workers) for i in range(workers)] == expected


def test_every_gpu_is_used_once_when_there_are_enough_workers() -> None:
    gpus = [str(i) for i in range(8)]
    for workers in range(1, 9):
        dealt = [g for i in range(workers) for g in worker_gpus(gpus, i, workers)]
        assert dealt == gpus, workers


def test_the_node_environment_names_its_gpus_even_as_uuids() -> None:
    assert node_gpus({"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
    uuid = "GPU-8f3c2f8e-1c1a-4d52-9d9b-5b1c7e9e0a11"
    assert node_gpus({"CUDA_VISIBLE_DEVICES": f"{uuid},1"}) == [uuid, "1"]
    assert node_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []  # set empty: no GPU at all


def fake_nvidia_smi(directory: str, output: str, code: int = 0) -> dict[str, str]:
    # No GPU or driver here: a stand-in nvidia-smi on PATH prints what a real one does.
    path = os.path.join(directory, "nvidia-smi")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nprintf '{output}'\nexit {code}\n")
    os.chmod(path, stat.S_IRWXU)
    return {"PATH": directory}


def test_without_the_variable_nvidia_smi_lists_the_gpus(tmp_path) -> None:  # noqa: ANN001
    assert node_gpus(fake_nvidia_smi(str(tmp_path), "0\\n1\\n2\\n")) == ["0", "1", "2"]


def test_a_failing_nvidia_smi_or_none_means_no_gpus(tmp_path) -> None:  # noqa: ANN001
    failing = fake_nvidia_smi(str(tmp_path), "NVIDIA-SMI has failed\\n", code=9)
    assert node_gpus(failing) == []
    assert node_gpus({"PATH": str(tmp_path / "empty")}) == []


def test_only_workers_with_company_are_confined() -> None:
    base = {"PATH": "/usr/bin"}
    assert worker_environment(base, ["0", "1"], 0, 1) == base  # one worker: every GPU
    assert worker_environment(base, [], 1, 2) == base  # no GPUs: nothing to set
    assert worker_environment(base, ["0", "1", "2", "3"], 1, 2) == {
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "2,3",
    }
