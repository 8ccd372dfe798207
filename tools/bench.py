"""Serving benchmark: InferFlux against its peers, same model, same prompts, same run.

    python tools/bench.py                      # InferFlux + llama-cpp-python's server
    LLAMA_SERVER=/path/to/llama-server python tools/bench.py   # + llama.cpp's server
    python tools/bench.py --structured         # json_schema overhead (8 vs 8 streams)

Each server is started here, measured alone (this machine has 2 cores), then stopped.
Clients are the official `openai` client (AsyncOpenAI), streaming. For each concurrency
level, that many clients each send `--rounds` chat requests back to back; we report
aggregate completion tok/s (all completion tokens / wall time) and TTFT p50/p95.
The shared-prefix workload sends concurrent requests that share a ~1,300-token system
prompt, with InferFlux's prefix cache on and off.

Peers run as their docs say, plus what this machine needs: llama-server with `-np 16
-c 16*ctx -nr` and llama-cpp-python's server through tools/peers/ (both with llama.cpp's
weight repacking off, which crashes on this CPU), `--interrupt_requests False`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
import openai
import trio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from inferflux.testing import free_port, stop_process  # noqa: E402

TOPICS = [
    "a lighthouse keeper",
    "a lost robot",
    "a dragon who bakes",
    "two rival chefs",
    "a time-travelling cat",
    "a city under the sea",
    "a haunted violin",
    "a desert train",
    "an honest politician",
    "a forgotten moon",
    "a library that moves",
    "a tiny giant",
    "a stubborn glacier",
    "a painter of clocks",
    "a whale who sings opera",
    "a paper fox",
]


@dataclass
class Target:
    name: str
    command: list[str]
    port: int
    model: str = "default"
    extra_body: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    with_top: bool = False  # run the inferflux-top UI (headless, 1 s polls) against it
    cwd: str = REPO  # InferFlux runs from the source tree it is started in
    top: subprocess.Popen | None = None

    def start(self, log_dir: str) -> None:
        log = open(os.path.join(log_dir, f"{self.name.replace(' ', '_')}.log"), "w")
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; see {log.name}"
                )
            try:
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


TOP_HEADLESS = (
    "import sys; from inferflux.top_app import TopApp; TopApp(sys.argv[1], 1.0).run(headless=True)"
)


@dataclass
class Sample:
    ttft_s: float
    tokens: int


async def one_request(
    client: openai.AsyncOpenAI,
    target: Target,
    messages: list[dict],
    max_tokens: int,
    response_format: dict | None = None,
) -> Sample:
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    stream = await client.chat.completions.create(
        model=target.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=target.extra_body,
        **({"response_format": response_format} if response_format else {}),
    )
    usage_tokens = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if not first:
                first = time.perf_counter() - start
            tokens += 1
        if getattr(chunk, "usage", None):
            usage_tokens = chunk.usage.completion_tokens
    return Sample(first or (time.perf_counter() - start), usage_tokens or tokens)


async def load(
    target: Target,
    concurrency: int,
    rounds: int,
    max_tokens: int,
    system: str | None = None,
    question: str | None = None,
    response_format: dict | None = None,
) -> dict:
    # max_retries=2 is the openai client's default: a keep-alive connection a server closed
    # between two requests is retried, as it is for users (llama-server does close some).
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{target.port}/v1", api_key="x", max_retries=2, timeout=600
    )
    samples: list[Sample] = []

    async def user(i: int) -> None:
        for r in range(rounds):
            topic = TOPICS[(i + r * concurrency) % len(TOPICS)]
            content = (
                question.format(topic=topic)
                if question
                else f"Write a long, detailed story about {topic}."
            )
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": content}
            ]
            samples.append(await one_request(client, target, messages, max_tokens, response_format))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(concurrency):
            nursery.start_soon(user, i)
    wall = time.perf_counter() - start
    ttfts = sorted(s.ttft_s for s in samples)
    return {
        "tok_s": sum(s.tokens for s in samples) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
        "requests": len(samples),
        "tokens": sum(s.tokens for s in samples),
    }


SHARED_SYSTEM = (
    "You are the support assistant of Flux Hardware. Follow these policies. "
    + " ".join(
        f"Policy {i}: when a customer asks about product line {i}, answer "
        f"with its warranty terms, its return window and its safety notes."
        for i in range(40)
    )
)


async def load_shared(target: Target) -> dict:
    """16 concurrent requests sharing SHARED_SYSTEM, after one request warmed the prefix."""
    await load(target, 1, 1, 8, SHARED_SYSTEM, "Tell me about {topic}.")
    return await load(
        target, 16, 1, 32, SHARED_SYSTEM, "Briefly: what is the warranty for {topic}?"
    )


# Structured-output workload: long enough that no stream completes its JSON before
# max_tokens (8+ chapters), so constrained and free streams generate the same token count.
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "genre": {"enum": ["fantasy", "mystery", "comedy", "drama"]},
        "chapters": {
            "type": "array",
            "minItems": 8,
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {
                    "number": {"type": "integer", "minimum": 1, "maximum": 99},
                    "title": {"type": "string", "maxLength": 60},
                    "mood": {"enum": ["happy", "sad", "tense", "calm"]},
                    "summary": {"type": "string", "maxLength": 200},
                    "twist": {"type": "boolean"},
                },
                "required": ["number", "title", "mood", "summary", "twist"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "genre", "chapters"],
    "additionalProperties": False,
}
STORY_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "story", "schema": STORY_SCHEMA, "strict": True},
}


async def run_structured(target: Target, args: argparse.Namespace) -> dict:
    """8 concurrent json_schema streams vs 8 free ones, alternated `--repeats` times so
    drift on this shared machine hits both alike; medians compared."""
    await load(target, 1, 1, 16)  # warm-up
    runs: dict[str, list[float]] = {"free": [], "json_schema": []}
    for _ in range(args.repeats):
        for kind, response_format in (("free", None), ("json_schema", STORY_FORMAT)):
            result = await load(
                target, 8, args.rounds, args.max_tokens, response_format=response_format
            )
            runs[kind].append(result["tok_s"])
            print(f"  {target.name} {kind}: {result}", flush=True)
    free, constrained = statistics.median(runs["free"]), statistics.median(runs["json_schema"])
    return {
        "free_tok_s": free,
        "json_schema_tok_s": constrained,
        "overhead_pct": 100 * (1 - constrained / free),
        "runs": runs,
    }


async def run_target(target: Target, args: argparse.Namespace, shared: bool) -> dict:
    results = {}
    await load(target, 1, 1, 16)  # warm-up
    for concurrency in args.concurrency:
        rounds = args.rounds * (2 if concurrency == 1 else 1)
        results[concurrency] = await load(target, concurrency, rounds, args.max_tokens)
        print(f"  {target.name} c={concurrency}: {results[concurrency]}", flush=True)
    if shared:
        results["shared"] = await load_shared(target)
        print(f"  {target.name} shared prefix: {results['shared']}", flush=True)
    return results


def targets(args: argparse.Namespace, model_path: str) -> list[tuple[Target, bool]]:
    py = sys.executable
    common = [
        "--n-parallel",
        "16",
        "--ctx-size",
        str(args.ctx_size),
        "--threads",
        str(args.threads),
    ]
    port = free_port()
    found = [
        (
            Target(
                "inferflux",
                [py, "-m", "inferflux", "run", "--port", str(port), *common],
                port,
                extra_body={"ignore_eos": True},
            ),
            True,
        )
    ]
    if args.baseline:
        port = free_port()
        found.append(
            (
                Target(
                    "inferflux (baseline)",
                    [py, "-m", "inferflux", "run", "--port", str(port), *common],
                    port,
                    extra_body={"ignore_eos": True},
                    cwd=os.path.abspath(args.baseline),
                ),
                False,
            )
        )
    if args.with_top:
        port = free_port()
        found.append(
            (
                Target(
                    "inferflux + inferflux-top",
                    [py, "-m", "inferflux", "run", "--port", str(port), *common],
                    port,
                    extra_body={"ignore_eos": True},
                    with_top=True,
                ),
                True,
            )
        )
    if args.prefix_off:
        port = free_port()
        found.append(
            (
                Target(
                    "inferflux (no prefix cache)",
                    [
                        py,
                        "-m",
                        "inferflux",
                        "run",
                        "--port",
                        str(port),
                        *common,
                        "--no-prefix-cache",
                    ],
                    port,
                    extra_body={"ignore_eos": True},
                ),
                True,
            )
        )
    llama_server = os.environ.get("LLAMA_SERVER")
    if llama_server:
        port = free_port()
        found.append(
            (
                Target(
                    "llama-server",
                    [
                        llama_server,
                        "-m",
                        model_path,
                        "-np",
                        "16",
                        "-c",
                        str(16 * args.ctx_size),
                        "-t",
                        str(args.threads),
                        "-nr",
                        "--port",
                        str(port),
                    ],
                    port,
                    extra_body={"ignore_eos": True},
                ),
                True,
            )
        )
    if not args.skip_llama_cpp_python:
        port = free_port()
        found.append(
            (
                Target(
                    "llama-cpp-python",
                    [
                        py,
                        os.path.join(REPO, "tools/peers/llama_cpp_python_server.py"),
                        "--model",
                        model_path,
                        "--interrupt_requests",
                        "False",
                        "--n_ctx",
                        str(args.ctx_size),
                        "--n_threads",
                        str(args.threads),
                        "--port",
                        str(port),
                    ],
                    port,
                    extra_body={"ignore_eos": True},
                ),
                False,
            )
        )
    return found


def table(all_results: dict[str, dict], concurrency: list[int]) -> str:
    lines = [
        "| server | concurrency | tok/s | TTFT p50 (s) | TTFT p95 (s) |",
        "|---|---|---|---|---|",
    ]
    for name, results in all_results.items():
        for c in concurrency:
            r = results[c]
            lines.append(
                f"| {name} | {c} | {r['tok_s']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} |"
            )
    ours = all_results.get("inferflux")
    if ours:
        lines += [
            "",
            "| ratio (InferFlux / peer) | concurrency | tok/s | TTFT p50 |",
            "|---|---|---|---|",
        ]
        for name, results in all_results.items():
            if name == "inferflux":
                continue
            for c in concurrency:
                lines.append(
                    f"| vs {name} | {c} | {ours[c]['tok_s'] / results[c]['tok_s']:.2f}x"
                    f" | {results[c]['ttft_p50'] / ours[c]['ttft_p50']:.2f}x faster |"
                )
        shared = {n: r["shared"] for n, r in all_results.items() if "shared" in r}
        if shared:
            lines += [
                "",
                "| shared-prefix workload (16 concurrent, ~1,300-token system prompt) "
                "| TTFT p50 (s) | TTFT p95 (s) | tok/s |",
                "|---|---|---|---|",
            ]
            for name, r in shared.items():
                lines.append(
                    f"| {name} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['tok_s']:.1f} |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--ctx-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--no-prefix-off",
        dest="prefix_off",
        action="store_false",
        help="skip the InferFlux run with the prefix cache off",
    )
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
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
    if args.structured:
        structured_main(args, model_path)
        return
    all_results: dict[str, dict] = {}
    for target, shared in targets(args, model_path):
        print(f"{target.name}: {' '.join(target.command)}", flush=True)
        target.start(args.log_dir)
        try:
            if target.name.startswith("inferflux (no prefix"):
                all_results[target.name] = {"shared": trio.run(load_shared, target)}
                print(f"  shared prefix: {all_results[target.name]['shared']}", flush=True)
            else:
                all_results[target.name] = trio.run(run_target, target, args, shared)
        finally:
            target.stop()
    print()
    print(table_all(all_results, args.concurrency))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=2, default=str)


def structured_main(args: argparse.Namespace, model_path: str) -> None:
    chosen = [
        target
        for target, _ in targets(args, model_path)
        if target.name in ("inferflux", "llama-server")
    ]
    results = {}
    for target in chosen:
        print(f"{target.name}: {' '.join(target.command)}", flush=True)
        target.start(args.log_dir)
        try:
            results[target.name] = trio.run(run_structured, target, args)
        finally:
            target.stop()
    print()
    print("| server | free tok/s | json_schema tok/s | overhead |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['free_tok_s']:.1f} | {r['json_schema_tok_s']:.1f} "
            f"| {r['overhead_pct']:.1f}% |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def table_all(all_results: dict[str, dict], concurrency: list[int]) -> str:
    full = {n: r for n, r in all_results.items() if all(c in r for c in concurrency)}
    text = table(full, concurrency)
    extra = {n: r["shared"] for n, r in all_results.items() if n not in full and "shared" in r}
    for name, r in extra.items():
        text += f"\n| {name} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['tok_s']:.1f} |"
    return text


if __name__ == "__main__":
    main()
