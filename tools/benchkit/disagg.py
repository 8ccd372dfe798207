"""`python tools/bench.py --disagg`: what a prefill node buys the decoding streams (issue 14).

The same load, one setup after the other:
- unified: one InferFlux on both cores (`--threads 2`);
- disaggregated: a prefill node pinned to core 0 and a decode node pinned to core 1
  (`taskset`, one llama.cpp thread each), joined over tcp on loopback.
Load: `--disagg-streams` clients decode continuously (short prompt, 200 tokens each,
back to back) while a ~2,000-token prompt (each one new: no prefix reuse) arrives every
`--disagg-every` seconds (40: one core prefills such a prompt in ~26 s here, so much
more often than that only builds a queue on the prefill node), for `--disagg-seconds`.
Reported: the decoding streams' inter-token latency (gaps between content chunks)
p50/p99/max, their tok/s, the long prompts' TTFT, and for the disaggregated setup the
share of a remote prefill spent moving the KV: the decode side's remote prefill time
minus the prefill node's own request time, over the latter (means from both nodes'
/metrics; a prompt that timed out on the prefill node skews it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import httpx
import openai
import trio

from inferflux.testing import free_port

from .load import client_for
from .targets import Target

CTX = 2304  # the long prompt (~2,000 tokens) and its answer fit one slot
GRACE_S = 60.0  # after the window, how long a long prompt may still take to its first token
FILLER = [
    "harbour", "ledger", "orchard", "lantern", "quarry", "meadow", "cistern", "foundry",
    "granary", "viaduct", "archive", "mill",
]  # fmt: skip


def long_prompt(serial: int) -> str:
    lines = [
        f"Line {j}: the {FILLER[j % len(FILLER)]} report for section {j} was filed on day "
        f"{(j * 7 + serial) % 28 + 1}."
        for j in range(90)
    ]
    return f"Document {serial}.\n" + "\n".join(lines) + "\nSummarize the document in one line."


def setups(args: argparse.Namespace) -> list[tuple[str, list[Target]]]:
    python = [sys.executable, "-m", "inferflux", "run"]
    common = ["--n-parallel", str(args.disagg_streams + 2), "--ctx-size", str(CTX)]
    unified_port = free_port()
    unified = Target(
        "unified (2 cores)",
        [*python, "--port", str(unified_port), "--threads", "2", *common],
        unified_port,
    )
    door = f"tcp://127.0.0.1:{free_port()}"
    prefill_port, decode_port = free_port(), free_port()
    prefill = Target(
        "prefill node (core 0)",
        ["taskset", "-c", "0", *python, "--port", str(prefill_port), "--threads", "1", *common,
         "--role", "prefill", "--cluster-listen", door],
        prefill_port,
        probe="/readyz",
    )  # fmt: skip
    decode = Target(
        "decode node (core 1)",
        ["taskset", "-c", "1", *python, "--port", str(decode_port), "--threads", "1", *common,
         "--role", "decode", "--prefill", door],
        decode_port,
    )  # fmt: skip
    found = [("unified", [unified]), ("disaggregated", [prefill, decode])]
    if args.max_step_ms:  # unified again, its prompt chunks cut to fit the step time
        cut_port = free_port()
        cut = Target(
            f"unified (2 cores, max_step_ms {args.max_step_ms:g})",
            [*python, "--port", str(cut_port), "--threads", "2", *common],
            cut_port,
            env={"INFERFLUX_SCHEDULER_MAX_STEP_MS": str(args.max_step_ms)},
        )
        found.insert(1, ("unified_cut", [cut]))
    return found


async def decoding_stream(
    client: openai.AsyncOpenAI, target: Target, until: float, gaps: list[float], tokens: list[int]
) -> None:
    while time.monotonic() < until:
        stream = await client.chat.completions.create(
            model=target.model,
            messages=[{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            max_tokens=200,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        last = 0.0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                now = time.monotonic()
                if last and now < until:
                    gaps.append(now - last)
                last = now
                tokens[0] += 1


async def long_prompts(
    client: openai.AsyncOpenAI, target: Target, until: float, every_s: float, ttfts: list[float]
) -> None:
    async def one(serial: int) -> None:
        # One still waiting then counts as unfinished (`until` is time.monotonic()'s: Trio's
        # clock has an offset of its own).
        with trio.move_on_after(until + GRACE_S - time.monotonic()):
            await first_token(serial)

    async def first_token(serial: int) -> None:
        started = time.monotonic()
        stream = await client.chat.completions.create(
            model=target.model,
            messages=[{"role": "user", "content": long_prompt(serial)}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttfts.append(time.monotonic() - started)
                break
        await stream.close()

    async with trio.open_nursery() as nursery:
        serial = int(time.time())
        while time.monotonic() + every_s < until:
            await trio.sleep(every_s)
            serial += 1
            nursery.start_soon(one, serial)


async def measure(targets: list[Target], args: argparse.Namespace) -> dict:
    front = targets[-1]  # the server clients talk to (unified, or the decode node)
    client = client_for(front)
    gaps: list[float] = []
    ttfts: list[float] = []
    tokens = [0]
    # Warm up: a long prompt (the first decode of a context allocates its buffers).
    warm = await client.chat.completions.create(
        model=front.model, messages=[{"role": "user", "content": long_prompt(0)}], max_tokens=4
    )
    assert warm.choices
    until = time.monotonic() + args.disagg_seconds
    async with trio.open_nursery() as nursery:
        for _ in range(args.disagg_streams):
            nursery.start_soon(decoding_stream, client, front, until, gaps, tokens)
        nursery.start_soon(long_prompts, client, front, until, args.disagg_every, ttfts)
    gaps.sort()
    result = {
        "itl_p50_ms": 1000 * statistics.median(gaps),
        "itl_p99_ms": 1000 * gaps[int(0.99 * (len(gaps) - 1))],
        "itl_max_ms": 1000 * gaps[-1],
        "decode_tok_s": tokens[0] / args.disagg_seconds,
        "long_prompts": len(ttfts),  # reached their first token within the grace
        "long_ttft_p50_s": statistics.median(ttfts) if ttfts else 0.0,
        "long_ttft_max_s": max(ttfts, default=0.0),
    }
    if len(targets) == 2:
        result |= transfer_share(targets[0], front)
    return result


def samples(target: Target) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{target.port}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            name = key.split("{", 1)[0]
            found[name] = found.get(name, 0.0) + float(value)
    return found


def prompt_paths(decode: Target) -> dict[str, float]:
    """The decode node's fresh requests by where their prompt was computed: remote, local
    (short, or refused by a backed-up prefill node), fallback."""
    text = httpx.get(f"http://127.0.0.1:{decode.port}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("inferflux:disagg_requests_total{"):
            path = line.split('path="', 1)[1].split('"', 1)[0]
            found[path] = found.get(path, 0.0) + float(line.rpartition(" ")[2])
    return found


def transfer_share(prefill: Target, decode: Target) -> dict:
    """Means over the run. The transfer: the decode side's remote prefill (asked to
    answered) less the prefill node's own request time (queue + prompt + first token +
    export), plus bringing the state here (kv_transfer_seconds: a pull, or finding the
    file on one host); as a share of the prefill node's time."""
    here, there = samples(decode), samples(prefill)
    count = here["inferflux:remote_prefill_seconds_count"]
    remote = here["inferflux:remote_prefill_seconds_sum"] / count
    brought = here["inferflux:kv_transfer_seconds_sum"] / count
    computed = there["inferflux:e2e_request_latency_seconds_sum"] / max(
        1.0, there["inferflux:e2e_request_latency_seconds_count"]
    )
    return {
        "remote_prefills": count,
        "remote_prefill_s": remote,
        "prefill_node_s": computed,
        "kv_brought_s": brought,
        "transfer_share": (remote - computed + brought) / computed,
        "kv_mb_each": here["inferflux:kv_transfer_bytes_total"] / count / 1e6,
        "paths": prompt_paths(decode),
    }


def disagg_main(args: argparse.Namespace) -> dict:
    results = {}
    for name, targets in setups(args):
        try:
            for target in targets:
                print(f"{target.name}: {' '.join(target.command)}", flush=True)
                target.start(args.log_dir)
            results[name] = trio.run(measure, targets, args)
            print(f"  {name}: {results[name]}", flush=True)
        finally:
            for target in reversed(targets):
                target.stop()
    unified, split = results["unified"], results["disaggregated"]
    print("\n| | unified (2 cores) | prefill core 0 + decode core 1 | unified / disaggregated |")
    print("|---|---|---|---|")
    for key in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms", "long_ttft_p50_s", "long_ttft_max_s"):
        ratio = unified[key] / split[key] if split[key] else float("nan")
        print(f"| {key} | {unified[key]:.3g} | {split[key]:.3g} | {ratio:.2f}x |")
    print(f"| decode_tok_s | {unified['decode_tok_s']:.1f} | {split['decode_tok_s']:.1f} | |")
    if "unified_cut" in results:
        cut = results["unified_cut"]
        print(f"\n| | unified | unified, max_step_ms {args.max_step_ms:g} | unified / cut |")
        print("|---|---|---|---|")
        for key in (
            "itl_p50_ms", "itl_p99_ms", "itl_max_ms", "long_ttft_p50_s", "long_ttft_max_s",
            "decode_tok_s",
        ):  # fmt: skip
            ratio = unified[key] / cut[key] if cut[key] else float("nan")
            print(f"| {key} | {unified[key]:.3g} | {cut[key]:.3g} | {ratio:.2f}x |")
    print(
        f"\nremote prefills {split['remote_prefills']:.0f}, {split['kv_mb_each']:.1f} MB of KV "
        f"each; remote prefill {split['remote_prefill_s']:.2f} s of which the prefill node "
        f"{split['prefill_node_s']:.2f} s, then {1000 * split['kv_brought_s']:.1f} ms to bring "
        f"the state here: transfer share {100 * split['transfer_share']:.1f}%; decode node's "
        f"prompts by path: {split['paths']}"
    )
    print(f"machine: {os.cpu_count()} cores")
    return results
