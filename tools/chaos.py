"""Chaos harness: a real server, a seeded request mix, a seeded nemesis, then invariants.

    python tools/chaos.py --profile ci --seed 1       # a couple of minutes (runs in CI)
    python tools/chaos.py --profile soak --seed 7 --duration 1800
    python tools/chaos.py --profile ci --seed 1 --isolate scheduler,policy

1. Starts `inferflux run --chaos` (the real default model) and drives the request mix once
   undisturbed, at temperature 0 or with a seed, to get reference outputs; about one
   request in seven is constrained by a JSON schema (response_format).
2. Drives the same mix again while the nemesis, every few seconds, does one of: SIGKILL or
   SIGSEGV the worker process, SIGSTOP it for a while then SIGCONT, raise an exception
   inside an actor (the worker in its process, its proxy, the scheduler or the policy,
   via the introspection socket), drop/duplicate/delay frames on the worker link for a
   while; with --isolate, also SIGKILL the scheduler's or the policy's process. Some
   clients hang up mid-stream on purpose.
3. Heals everything, waits for quiescence, stops the server with SIGTERM, and checks:
   every request got exactly one terminal outcome; every completed stream equals its
   reference token for token (nothing lost, nothing duplicated), and a constrained one
   that finished is JSON; no sequence running or
   waiting and no slot held at quiescence; no supervisor gave up (its intensity);
   no orphan worker (scheduler, policy) process; no leaked ipc socket file.
Prints the seed and `chaos: F faults, R requests, L lost, D dup`; exits 1 on a violation.
The pieces live in tools/chaoskit/.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

import httpx
import trio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from chaoskit.budget import RestartBudget  # noqa: E402
from chaoskit.checks import check_disagg, check_job, check_quiescence, summarize  # noqa: E402
from chaoskit.jobs import PROFILES, Report, drive, make_jobs  # noqa: E402
from chaoskit.nemesis import chaos_run  # noqa: E402
from chaoskit.servers import (  # noqa: E402
    DISAGG_ENV,
    PrefillNode,
    Server,
    ipc_files,
    process_pids,
    worker_pids_alive,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="ci")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    parser.add_argument(
        "--duration", type=float, default=0, help="soak: repeat rounds for this many seconds"
    )
    parser.add_argument("--log", default=os.path.join(tempfile.gettempdir(), "inferflux-chaos.log"))
    parser.add_argument(
        "--isolate",
        default=os.environ.get("INFERFLUX_SERVER_ISOLATE", ""),
        help="run these actors in processes of their own (scheduler,policy); the nemesis "
        "then SIGKILLs those processes too",
    )
    parser.add_argument(
        "--disagg",
        action="store_true",
        help="the server is a decode node with a prefill node; the nemesis also SIGKILLs "
        "and SIGSTOPs the prefill node",
    )
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    rng = random.Random(args.seed)
    print(f"chaos: seed {args.seed}, profile {args.profile}; server log {args.log}", flush=True)
    files_before = ipc_files()
    prefill = PrefillNode(args.log) if args.disagg else None
    env = {"INFERFLUX_SCHEDULER_WORKER_WAIT_S": "120"}
    roles = ("--role", "decode", "--prefill", prefill.door) if prefill else ()
    server = Server(args.log, env | (DISAGG_ENV if prefill else {}), args.isolate, *roles)
    problems: list[str] = []
    worker_pids: set[int] = set()
    totals = Report()
    try:
        server.wait_ready()
        model = httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"]
        jobs = make_jobs(rng, profile)
        reference = Report()
        trio.run(drive, server.url, model, [j for j in jobs if not j.hang_up_after], 4, reference)
        ref = {i: o[0] for i, o in reference.outcomes.items()}
        if any(o.kind != "completed" for o in ref.values()):
            problems.append("the undisturbed reference run had failures")
        started = time.monotonic()
        budget = RestartBudget(server.snapshot().name)  # one for all rounds
        while True:
            report = trio.run(chaos_run, server, model, jobs, profile, rng, budget, prefill)
            totals.faults += report.faults
            for i, outcomes in report.outcomes.items():
                totals.outcomes.setdefault(len(totals.outcomes), []).extend(outcomes)
                problems += check_job(jobs[i], outcomes, ref.get(i))
            worker_pids |= process_pids(server.snapshot())
            if time.monotonic() - started >= args.duration:
                break
        problems += check_quiescence(server)
        budget.observe(server.snapshot())
        print(f"chaos: {budget.summary()}")
        worker_pids |= process_pids(server.snapshot())
        if prefill is not None:
            problems += check_disagg(server, prefill)
    finally:
        code = server.stop()
        if prefill is not None:
            prefill.server.stop()
            worker_pids |= prefill.pids
    if code != 0:
        problems.append(f"server exited with {code} on SIGTERM")
    time.sleep(0.5)
    if worker_pids_alive(worker_pids):
        problems.append(f"orphan processes: {sorted(worker_pids_alive(worker_pids))}")
    leaked = ipc_files() - files_before
    if leaked:
        problems.append(f"leaked ipc files: {sorted(leaked)}")
    outcomes = [o for os_ in totals.outcomes.values() for o in os_]
    lost = sum(1 for p in problems if p.startswith("lost"))
    dup = sum(1 for p in problems if p.startswith("dup"))
    kinds = {k: sum(1 for o in outcomes if o.kind == k) for k in ("completed", "hung_up", "error")}
    print(f"chaos: faults by kind: {summarize(totals.faults)}")
    for problem in problems:
        print(f"chaos: VIOLATION: {problem}")
    print(
        f"chaos: seed {args.seed}, {len(totals.faults)} faults, {len(outcomes)} requests "
        f"({kinds['completed']} completed, {kinds['hung_up']} hung up by the client, "
        f"{kinds['error']} errors), {lost} lost, {dup} dup, {len(problems)} violations"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
