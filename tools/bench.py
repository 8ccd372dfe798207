"""Serving benchmark: InferFlux against its peers and the engine's own limit, same model,
same prompts, same run.

    python tools/bench.py                      # InferFlux + llama-cpp-python's server
    LLAMA_SERVER=/path/to/llama-server python tools/bench.py   # + llama.cpp's server
    LLAMA_BATCHED_BENCH=/path/to/llama-batched-bench ...       # + the engine's limit
    python tools/bench.py --workload free code typos json --speculative both \\
        --llama-spec ngram-simple ngram-mod    # speculative decoding on/off vs llama-server's
    python tools/bench.py --structured         # json_schema overhead (8 vs 8 streams)
    python tools/bench.py --disagg             # prefill node + decode node vs unified

Each server is started here, measured alone (this machine has 2 cores), then stopped.
Clients are the official `openai` client (AsyncOpenAI), streaming, greedy. For each
workload and concurrency level, that many clients each send `--rounds` chat requests back
to back; we report aggregate completion tok/s (all completion tokens / wall time), TTFT
p50/p95 and, with LLAMA_BATCHED_BENCH, each server's share of what llama.cpp itself does
for the workload's prompt and output lengths. The shared-prefix workload sends concurrent
requests that share a ~1,300-token system prompt, with InferFlux's prefix cache on and off.
The pieces live in tools/benchkit/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import trio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchkit.disagg import disagg_main  # noqa: E402
from benchkit.interleave import run_interleaved  # noqa: E402
from benchkit.limit import engine_limit  # noqa: E402
from benchkit.load import load, load_shared  # noqa: E402
from benchkit.report import full_report  # noqa: E402
from benchkit.structured import structured_main  # noqa: E402
from benchkit.targets import Target, targets  # noqa: E402
from benchkit.workloads import WORKLOADS  # noqa: E402


async def run_target(target: Target, args: argparse.Namespace) -> dict:
    results: dict = {}
    await load(target, 1, 1, 16)  # warm-up
    for name in args.workload:
        workload = WORKLOADS[name]
        max_tokens = workload.max_tokens or args.max_tokens
        results[name] = {}
        for concurrency in args.concurrency:
            rounds = args.rounds * (2 if concurrency == 1 else 1)
            r = await load(target, concurrency, rounds, max_tokens, workload)
            results[name][concurrency] = r
            print(f"  {target.name} {name} c={concurrency}: {r}", flush=True)
    if target.shared_prefix and args.shared:
        results["shared"] = await load_shared(target)
        print(f"  {target.name} shared prefix: {results['shared']}", flush=True)
    return results


def limits_for(all_results: dict, args: argparse.Namespace, model_path: str) -> dict:
    """The engine's limit per workload, at the prompt and output lengths InferFlux saw."""
    binary = os.environ.get("LLAMA_BATCHED_BENCH")
    if not binary:
        return {}
    reference = next(r for n, r in all_results.items() if n.startswith("inferflux"))
    limits = {}
    for name in args.workload:
        runs = [r for r in reference.get(name, {}).values()]
        if not runs:
            continue
        prompt = round(sum(r["prompt_tokens"] for r in runs) / len(runs))
        gen = round(sum(r["tokens"] for r in runs) / sum(r["requests"] for r in runs))
        limits[name] = engine_limit(
            binary, model_path, prompt, gen, args.concurrency, args.threads, args.ctx_size
        )
        print(f"  engine limit {name}: {limits[name]}", flush=True)
    return limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=128, help="for the free workload")
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--workload",
        nargs="+",
        default=["free"],
        choices=sorted(WORKLOADS),
        help="free: a story (the default); code, typos, json: answers that copy the prompt; "
        "long: a 716-token prompt (TTFT)",
    )
    parser.add_argument(
        "--speculative",
        choices=["default", "on", "off", "both"],
        default="default",
        help="InferFlux's speculative decoding: as configured, on, off, or both in one run",
    )
    parser.add_argument(
        "--llama-spec",
        nargs="*",
        default=[],
        metavar="TYPE",
        help="also run llama-server with --spec-type TYPE (e.g. ngram-simple ngram-mod)",
    )
    parser.add_argument(
        "--no-prefix-off",
        dest="prefix_off",
        action="store_false",
        help="skip the InferFlux run with the prefix cache off",
    )
    parser.add_argument(
        "--no-shared", dest="shared", action="store_false", help="skip the shared-prefix workload"
    )
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="PASSES",
        help="start all servers at once and measure them in turns, PASSES times per level "
        "(medians reported): machine drift hits every server alike (no shared-prefix runs)",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run InferFlux from another source tree (e.g. a `git worktree` of an "
        "earlier commit), for a before/after comparison in the same run",
    )
    parser.add_argument(
        "--with-top",
        action="store_true",
        help="also run InferFlux with the inferflux-top UI polling it (its overhead)",
    )
    parser.add_argument(
        "--structured",
        action="store_true",
        help="structured-output overhead: 8 json_schema streams vs 8 free ones "
        "(InferFlux, and llama-server when LLAMA_SERVER is set)",
    )
    parser.add_argument(
        "--disagg",
        action="store_true",
        help="decode latency under long prompts: unified on both cores vs a prefill node "
        "and a decode node on one core each (tools/benchkit/disagg.py)",
    )
    parser.add_argument("--disagg-streams", type=int, default=8)
    parser.add_argument("--disagg-every", type=float, default=40.0, help="seconds")
    parser.add_argument("--disagg-seconds", type=float, default=150.0)
    parser.add_argument(
        "--max-step-ms",
        type=float,
        default=0.0,
        help="--disagg: also run unified with scheduler.max_step_ms set to this",
    )
    parser.add_argument("--repeats", type=int, default=3, help="--structured alternations")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--log-dir", default="/tmp")
    args = parser.parse_args()
    from inferflux.model.store import default_model_path

    model_path = str(default_model_path())
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; model {os.path.basename(model_path)}",
        flush=True,
    )
    if args.disagg:
        results = disagg_main(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return
    if args.structured:
        chosen = [t for t in targets(args, model_path) if t.name in ("inferflux", "llama-server")]
        structured_main(args, chosen)
        return
    if not args.shared:
        args.prefix_off = False
    all_results: dict[str, dict] = {}
    if args.interleave:
        found = [t for t in targets(args, model_path) if "no prefix" not in t.name]
        try:
            for target in found:
                print(f"{target.name}: {' '.join(target.command)}", flush=True)
                target.start(args.log_dir)
            all_results = trio.run(run_interleaved, found, args)
        finally:
            for target in found:
                target.stop()
        report(all_results, args, model_path)
        return
    for target in targets(args, model_path):
        print(f"{target.name}: {' '.join(target.command)}", flush=True)
        target.start(args.log_dir)
        try:
            if target.name.startswith("inferflux (no prefix"):
                all_results[target.name] = {"shared": trio.run(load_shared, target)}
                print(f"  shared prefix: {all_results[target.name]['shared']}", flush=True)
            else:
                all_results[target.name] = trio.run(run_target, target, args)
        finally:
            target.stop()
    report(all_results, args, model_path)


def report(all_results: dict, args: argparse.Namespace, model_path: str) -> None:
    limits = limits_for(all_results, args, model_path)
    print()
    print(full_report(all_results, args.workload, args.concurrency, limits))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"servers": all_results, "limits": limits}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
