"""The chaos nemesis: every few seconds one fault (signals, actor crashes, link faults,
prefill node failures), within the supervisors' restart budget."""

from __future__ import annotations

import os
import random
import signal

import trio

from actors import send_command

from .budget import RestartBudget
from .jobs import Job, Report, drive
from .servers import PrefillNode, Server

# What each fault restarts (a child of which supervisor), when it restarts anything.
ISOLATED_KILLS = ("sigkill-scheduler", "sigkill-policy")
TARGETS = {
    "sigkill": "worker-0",
    "sigsegv": "worker-0",
    "crash-worker": "worker-0",
    "crash-worker-proxy": "worker-0",
    "link": "worker-0",  # a lost frame breaks the link: one restart (or none)
    "crash-scheduler": "scheduler",
    "crash-policy": "policy",
    # --isolate only: the scheduler's process (restarted by model:ID) and the policy's
    # (restarted by the root); the ingress resubmits its streams, recompute does the rest.
    "sigkill-scheduler": "scheduler",
    "sigkill-policy": "policy",
}


async def watch_restarts(server: Server, budget: RestartBudget, done: trio.Event) -> None:
    while not done.is_set():
        budget.observe(await trio.to_thread.run_sync(server.snapshot))
        with trio.move_on_after(0.5):
            await done.wait()


async def nemesis(
    server: Server,
    rng: random.Random,
    period: tuple,
    report: Report,
    done: trio.Event,
    budget: RestartBudget,
    prefill: PrefillNode | None = None,
) -> None:
    stopped_pid = 0
    last: tuple[str, int] | None = None  # the previous fault's kind, restarts seen by then
    first = await trio.to_thread.run_sync(server.snapshot)
    isolated = [
        name
        for name in ("scheduler", "policy")
        if (info := first.find(name)) is not None and info.kind == "process"
    ]
    while not done.is_set():
        with trio.move_on_after(rng.uniform(*period)):
            await done.wait()
        if done.is_set():
            break
        tree = await trio.to_thread.run_sync(server.snapshot)
        budget.observe(tree)
        worker = tree.find("worker-0")
        if worker is None or worker.state != "running":
            continue  # restarting: let it come back
        if last is not None:
            budget.by_kind.setdefault(last[0], []).append(budget.total() - last[1])
        # Stay inside every supervisor's restart intensity, counting the restarts the
        # tree shows (RestartBudget): exceeding one is a different test
        # (tests/integration/test_worker_crash.py); the root giving up stops the server,
        # as it should.
        action = rng.choice(
            [
                "sigkill",
                "sigsegv",
                "sigstop",
                "crash-worker",
                "crash-worker-proxy",
                "crash-scheduler",
                "crash-policy",
                "link",
                *[f"sigkill-{name}" for name in isolated],
                *(["sigkill-prefill", "sigstop-prefill"] if prefill else []),
            ]
        )
        victim = tree.find(TARGETS[action]) if action in TARGETS else None
        if action in TARGETS and (victim is None or victim.state != "running" or not victim.pid):
            action = rng.choice(["sigstop", "link-soft"])  # restarting: let it come back
        if action in TARGETS and not budget.allows(tree, TARGETS[action]):
            action = rng.choice(["sigstop", "link-soft"])  # restart nothing
        if action in TARGETS:
            budget.sending(tree, TARGETS[action])
        last = (action, budget.total())
        if action in ("sigkill", "sigsegv"):  # SIGSEGV: what a C-level crash delivers
            os.kill(worker.pid, signal.SIGKILL if action == "sigkill" else signal.SIGSEGV)
        elif action == "sigkill-prefill":
            assert prefill is not None
            await trio.to_thread.run_sync(prefill.kill_and_restart)
        elif action == "sigstop-prefill":  # past the heartbeat timeout: the link goes down
            assert prefill is not None
            pid = prefill.server.process.pid
            os.kill(pid, signal.SIGSTOP)
            await trio.sleep(rng.uniform(0.5, 3.0))
            os.kill(pid, signal.SIGCONT)
        elif action in ISOLATED_KILLS:
            assert victim is not None
            os.kill(victim.pid, signal.SIGKILL)
        elif action == "sigstop":
            os.kill(worker.pid, signal.SIGSTOP)
            stopped_pid = worker.pid
            await trio.sleep(rng.uniform(0.3, 2.0))
            os.kill(worker.pid, signal.SIGCONT)
            stopped_pid = 0
        elif action.startswith("crash-"):
            name = "worker-0" if "worker" in action else action.removeprefix("crash-")
            where = "proxy" if action.endswith("proxy") else "child"
            answer = send_command(
                server.introspection, {"op": "crash", "actor": name, "where": where}
            )
            if "error" in answer:
                raise RuntimeError(f"crash command refused: {answer}")
        else:
            faults = {
                "drop": 0.05 if action == "link" else 0.0,  # a lost frame breaks the link
                "duplicate": rng.choice([0.0, 0.2]),
                "delay": 0.3,
                "delay_s": 0.02,
                "seed": rng.randint(0, 1000),
            }
            send_command(
                server.introspection, {"op": "faults", "actor": "worker-0", "faults": faults}
            )
            action = f"{action}(drop={faults['drop']}, dup={faults['duplicate']}, delay)"
            await trio.sleep(rng.uniform(0.5, 2.0))
            send_command(server.introspection, {"op": "faults", "actor": "worker-0", "faults": {}})
        report.faults.append(action)
    if stopped_pid:
        os.kill(stopped_pid, signal.SIGCONT)


async def chaos_run(
    server: Server,
    model: str,
    jobs: list[Job],
    profile: dict,
    rng: random.Random,
    budget: RestartBudget,
    prefill: PrefillNode | None = None,
) -> Report:
    report = Report()
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_restarts, server, budget, done)
        nursery.start_soon(nemesis, server, rng, profile["period"], report, done, budget, prefill)
        await drive(server.url, model, jobs, profile["concurrency"], report)
        done.set()
    return report
