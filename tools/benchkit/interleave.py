"""All servers loaded side by side, measured in turns: for every workload and concurrency
level, each server runs the level once per pass, `passes` times over. This machine's
speed drifts by 10-20% over minutes (a shared VM), which one server after the other
would book as a difference between servers; in turns, drift hits all of them alike.
Idle servers take no CPU (InferFlux's worker and llama-server sleep when idle), memory is
the price: each keeps its KV cache (~0.8 GB for 16 x 2048 cells of the default model)."""

from __future__ import annotations

import argparse
import statistics

from .load import load
from .report import CPU_KEYS
from .targets import Target
from .workloads import WORKLOADS


def combine(runs: list[dict]) -> dict:
    """One measurement from several passes: medians, and the passes themselves."""
    return {
        "tok_s": statistics.median(r["tok_s"] for r in runs),
        "ttft_p50": statistics.median(r["ttft_p50"] for r in runs),
        "ttft_p95": statistics.median(r["ttft_p95"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "tokens": sum(r["tokens"] for r in runs),
        "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in runs),
        "passes": [round(r["tok_s"], 1) for r in runs],
        **{  # CPU per token (cpu.py): medians too
            key: statistics.median(r[key] for r in runs)
            for key in CPU_KEYS
            if all(key in r for r in runs)
        },
    }


async def run_interleaved(found: list[Target], args: argparse.Namespace) -> dict[str, dict]:
    results: dict[str, dict] = {t.name: {} for t in found}
    for target in found:
        await load(target, 1, 1, 16)  # warm-up
    for name in args.workload:
        workload = WORKLOADS[name]
        max_tokens = workload.max_tokens or args.max_tokens
        for concurrency in args.concurrency:
            rounds = args.rounds * (2 if concurrency == 1 else 1)
            runs: dict[str, list[dict]] = {t.name: [] for t in found}
            for _ in range(args.interleave):
                for target in found:
                    r = await load(target, concurrency, rounds, max_tokens, workload)
                    runs[target.name].append(r)
                    print(f"  {target.name} {name} c={concurrency}: {r}", flush=True)
            for target in found:
                results[target.name].setdefault(name, {})[concurrency] = combine(runs[target.name])
    return results
