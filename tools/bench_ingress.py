"""The serving path's own ceiling: InferFlux with an engine that does no arithmetic.

    python tools/bench_ingress.py                          # 10 ms steps, 16 and 64 streams
    python tools/bench_ingress.py --step-ms 10 20 --concurrency 16 64 128

The worker is benchkit/synthetic.py's: each decode sleeps --step-ms and picks a fixed
token; the worker's Engine, its process, the scheduler, the ingress and HTTP are the real
ones. Clients are benchkit/rawload.py's (raw HTTP, streamed, unparsed), so that they are
not the bottleneck. For each level it prints the tok/s reached, what the synthetic engine
would allow (streams x steps a second), and the CPU per token of the server process, the
worker and the client. On a GPU host the same question is asked of the real engine; here
it says how many tokens a second the Python serving path can carry at all.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
sys.path[:0] = [REPO, TOOLS]

from benchkit.cpu import CpuSnapshot  # noqa: E402
from benchkit.rawload import raw_load  # noqa: E402
from benchkit.synthetic import STEP_MS_ENV  # noqa: E402
from benchkit.targets import Target  # noqa: E402

from inferflux.testing import free_port  # noqa: E402

LAUNCH = (
    "import sys; import inferflux.serving.subtree as subtree; "
    "subtree.WORKER_TARGET = 'benchkit.synthetic:SyntheticWorker'; "
    "from inferflux.cli import main; main(sys.argv[1:])"
)


def synthetic_server(step_ms: float, slots: int, ctx_size: int) -> Target:
    port = free_port()
    command = [sys.executable, "-c", LAUNCH, "run", "--port", str(port)]
    command += ["--n-parallel", str(slots), "--ctx-size", str(ctx_size)]
    env = {STEP_MS_ENV: str(step_ms), "PYTHONPATH": os.pathsep.join([REPO, TOOLS])}
    return Target(f"inferflux, {step_ms:g} ms synthetic steps", command, port, env=env)


async def measure(target: Target, concurrency: int, rounds: int, max_tokens: int) -> dict:
    assert target.process is not None
    await raw_load(target.port, target.model, 1, 1, 16)  # warm-up
    before = CpuSnapshot.take(target.process.pid)
    result = await raw_load(target.port, target.model, concurrency, rounds, max_tokens)
    after = CpuSnapshot.take(target.process.pid)
    return result | after.per_token_ms(before, result["tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, nargs="+", default=[10.0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--log-dir", default="/tmp")
    args = parser.parse_args()
    slots = max(args.concurrency)
    rows = []
    for step_ms in args.step_ms:
        target = synthetic_server(step_ms, slots, args.max_tokens + 128)
        print(f"{target.name}: {' '.join(target.command)}", flush=True)
        target.start(args.log_dir)
        try:
            for c in args.concurrency:
                r = trio.run(measure, target, c, args.rounds, args.max_tokens)
                print(f"  c={c}: {r}", flush=True)
                rows.append((step_ms, c, r))
        finally:
            target.stop()
    print()
    print(
        "| step (ms) | streams | tok/s | engine allows (tok/s) | share | TTFT p50 (s) "
        "| server ms/token | worker ms/token | client ms/token |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for step_ms, c, r in rows:
        allows = c * 1000 / step_ms
        print(
            f"| {step_ms:g} | {c} | {r['tok_s']:.0f} | {allows:.0f} | "
            f"{100 * r['tok_s'] / allows:.0f}% | {r['ttft_p50']:.3f} | "
            f"{r['cpu_server_ms']:.3f} | {r['cpu_children_ms']:.3f} | {r['cpu_client_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
