"""The engine's own limit for a workload: llama.cpp's `llama-batched-bench`, built from
the same vendored llama.cpp as llama-server, with the workload's prompt and output lengths.

Its `S_TG` column (generation only) leaves out the prompt and overstates what a server can
reach; what a server is held to here is generated tokens over total time, prompt
included (B * TG / T): every request's prompt has to be computed too.
"""

from __future__ import annotations

import json
import subprocess


def engine_limit(
    binary: str,
    model_path: str,
    prompt_tokens: int,
    gen_tokens: int,
    concurrency: list[int],
    threads: int,
    ctx_size: int,
) -> dict[int, dict]:
    """concurrency -> {"tok_s": generated / total time, "gen_only_tok_s", "prompt_tok_s"}."""
    command = [
        binary,
        "-m",
        model_path,
        "-c",
        str(max(concurrency) * ctx_size),
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(gen_tokens),
        "-npl",
        ",".join(str(c) for c in concurrency),
        "-t",
        str(threads),
        "-nr",  # as the servers run here (weight repacking off)
        "--output-format",
        "jsonl",
    ]
    print(f"engine limit: {' '.join(command)}", flush=True)
    run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({run.returncode}):\n{run.stderr[-2000:]}")
    limits = {}
    for line in (run.stdout + run.stderr).splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        limits[row["pl"]] = {
            "tok_s": row["pl"] * row["tg"] / row["t"],
            "gen_only_tok_s": row["speed_tg"],
            "prompt_tok_s": row["speed_pp"],
            "prompt_tokens": row["pp"],
            "gen_tokens": row["tg"],
        }
    missing = [c for c in concurrency if c not in limits]
    if missing:
        raise RuntimeError(f"llama-batched-bench gave no result for {missing}")
    return limits
