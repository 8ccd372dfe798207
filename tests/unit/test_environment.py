"""What a worker process inherits: an allowlist without secrets."""

from __future__ import annotations

from inferflux.environment import child_environment


def test_a_worker_gets_what_it_runs_with_and_no_secrets() -> None:
    server = {
        "PATH": "/usr/bin",
        "HOME": "/home/ifx",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src",
        "CUDA_VISIBLE_DEVICES": "0",
        "GGML_CUDA_NO_PINNED": "1",
        "OMP_NUM_THREADS": "4",
        "INFERFLUX_LLAMA_LOG": "1",
        "INFERFLUX_POLICY_KEY": "the store passphrase",
        "LLAMA_API_KEY": "sk-llama",
        "INFERFLUX_OIDC_TOKEN": "eyJ...",
        "OPENAI_API_KEY": "sk-openai",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "GITHUB_TOKEN": "ghp",
        "DATABASE_URL": "postgres://u:p@db/x",
        "SSH_AUTH_SOCK": "/tmp/agent",
    }
    assert child_environment(server) == {
        "PATH": "/usr/bin",
        "HOME": "/home/ifx",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": "/src",
        "CUDA_VISIBLE_DEVICES": "0",
        "GGML_CUDA_NO_PINNED": "1",
        "OMP_NUM_THREADS": "4",
        "INFERFLUX_LLAMA_LOG": "1",
    }
