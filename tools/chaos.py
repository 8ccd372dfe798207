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
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import httpx
import openai
import trio

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from actors import fetch_snapshot, send_command  # noqa: E402
from actors._info import ActorInfo  # noqa: E402
from inferflux.testing import free_port, stop_process  # noqa: E402

PROFILES = {
    # requests, concurrency, nemesis period (s), max_tokens range
    "ci": dict(requests=90, concurrency=6, period=(1.5, 3.0), max_tokens=(16, 48)),
    "soak": dict(requests=400, concurrency=8, period=(1.0, 5.0), max_tokens=(16, 128)),
}
PROMPTS = [
    "Write a short story about a fox.",
    "Explain how rain forms.",
    "Describe a castle at night.",
    "List three uses of copper.",
    "What is a prime number?",
    "Give advice to a new gardener.",
    "Why is the sky blue?",
    "Describe the taste of an apple.",
]
ENGINE_INTENSITY = 5  # engine supervisor: restarts allowed per 60 s (config supervision.*)
ROOT_INTENSITY = 10  # root supervisor (policy, models, ingress): restarts per 60 s
MODEL_INTENSITY = 3  # a model's subtree (model:ID: engine, metrics, scheduler) per 60 s
WINDOW_S = 60.0
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


@dataclass
class Job:
    index: int
    prompt: str
    max_tokens: int
    stream: bool
    sampling: dict
    hang_up_after: int  # streamed chunks before the client disconnects; 0: never


@dataclass
class Outcome:
    kind: str  # completed | hung_up | error
    text: str = ""
    finish_reason: str = ""
    completion_tokens: int = 0
    detail: str = ""


@dataclass
class Report:
    faults: list[str] = field(default_factory=list)
    outcomes: dict[int, list[Outcome]] = field(default_factory=dict)


def parent_of(tree: ActorInfo, name: str) -> ActorInfo | None:
    """The supervisor whose child `name` is."""
    for info in tree.walk():
        if any(child.name == name for child in info.children):
            return info
    return None


class RestartBudget:
    """The supervisors' real restarts, read from the tree, against their intensity.

    Counting the faults sent is not enough: a fault may restart nothing (a `link` fault
    whose 5% drop hit no frame) or more than planned, and a budget kept per round forgot
    the restarts of the previous round's last minute (the soak's rounds run back to back),
    which let the engine see 6 restarts in 60 s. So: poll the tree, note the time whenever
    a child's restart count grows (at the poll: later than it happened, so the window
    errs on the safe side), and keep this across rounds. A fault is sent only if its
    supervisor, counting the restarts seen and the faults sent in the window (whichever
    is more), still has room for it and one more."""

    def __init__(self, root: str) -> None:
        self.limits = {"engine": ENGINE_INTENSITY, root: ROOT_INTENSITY}
        self.counts: dict[tuple[str, str], int] = {}  # (supervisor, child) -> restarts
        self.seen: dict[str, list[float]] = {}  # supervisor -> times restarts were seen
        self.sent: dict[str, list[float]] = {}  # supervisor -> times faults were sent
        self.by_kind: dict[str, list[int]] = {}  # fault kind -> restarts seen after each

    def observe(self, tree: ActorInfo) -> None:
        now = time.monotonic()
        for info in tree.walk():
            if info.kind != "supervisor":
                continue
            for child in info.children:
                key = (info.name, child.name)
                grown = child.restarts - self.counts.get(key, 0)
                if grown < 0:  # a restarted supervisor counts from zero again
                    grown = child.restarts
                self.counts[key] = child.restarts
                self.seen.setdefault(info.name, []).extend([now] * grown)

    def recent(self, supervisor: str, now: float) -> int:
        def within(times: list[float]) -> int:
            return sum(1 for t in times if now - t < WINDOW_S)

        return max(within(self.seen.get(supervisor, [])), within(self.sent.get(supervisor, [])))

    def allows(self, tree: ActorInfo, target: str) -> bool:
        parent = parent_of(tree, target)
        if parent is None:
            return False
        limit = self.limits.get(parent.name, MODEL_INTENSITY)
        return self.recent(parent.name, time.monotonic()) + 2 <= limit

    def sending(self, tree: ActorInfo, target: str) -> None:
        parent = parent_of(tree, target)
        if parent is not None:
            self.sent.setdefault(parent.name, []).append(time.monotonic())

    def total(self) -> int:
        return sum(len(times) for times in self.seen.values())

    def summary(self) -> str:
        parts = [f"{name} {len(times)}" for name, times in sorted(self.seen.items()) if times]
        per_kind = [
            f"{kind} {sum(after)}/{len(after)}" for kind, after in sorted(self.by_kind.items())
        ]
        return (
            f"restarts seen: {', '.join(parts) or 'none'}; "
            f"restarts seen after each kind of fault (restarts/faults): {', '.join(per_kind)}"
        )


# Some requests are constrained by a JSON schema: their grammar state must survive every
# fault too (rebuilt from the sent tokens on recompute).
STRUCTURED = {
    "type": "json_schema",
    "json_schema": {
        "name": "note",
        "schema": {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "maxLength": 30},
                "mood": {"enum": ["calm", "curious", "tense"]},
                "points": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 40},
                    "minItems": 1,
                    "maxItems": 4,
                },
            },
            "required": ["topic", "mood", "points"],
            "additionalProperties": False,
        },
    },
}


def make_jobs(rng: random.Random, profile: dict) -> list[Job]:
    jobs = []
    # A separate stream for the structured choice keeps a seed's other draws unchanged.
    structured = random.Random(rng.random())
    for i in range(profile["requests"]):
        sampled = rng.random() < 0.25
        sampling: dict = (
            {"temperature": 0.8, "seed": rng.randint(0, 10_000)} if sampled else {"temperature": 0}
        )
        if structured.random() < 0.15:
            sampling["response_format"] = STRUCTURED
        jobs.append(
            Job(
                i,
                rng.choice(PROMPTS),
                rng.randint(*profile["max_tokens"]),
                stream=rng.random() < 0.75,
                sampling=sampling,
                hang_up_after=rng.choice([0] * 6 + [3, 8]),
            )
        )
    return jobs


class Server:
    def __init__(
        self, log_path: str, extra_env: dict[str, str], isolate: str = "", *extra: str
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        command = [sys.executable, "-m", "inferflux", "run", "--chaos", "--port", str(self.port)]
        command += ["--n-parallel", "4", "--ctx-size", "512", *extra]
        command += ["--isolate", isolate] if isolate else []
        # Poison detection off: this nemesis kills workers at random, which to any detector
        # looks like a request crashing them (the scheduler's docstring).
        env = dict(os.environ, INFERFLUX_SUPERVISION_POISON_CRASHES="0", **extra_env)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        self.introspection = ""

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early; see {self.log_path}")
            match = re.search(r"actor tree at (\S+)", open(self.log_path).read())
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                ready = False
            if ready and match:
                self.introspection = match.group(1)
                return
            time.sleep(0.3)
        raise RuntimeError(f"server not ready in {timeout_s}s; see {self.log_path}")

    def snapshot(self) -> ActorInfo:
        return fetch_snapshot(self.introspection)

    def stop(self) -> int:
        stop_process(self.process, 60)
        self.log.close()
        return self.process.returncode


# --disagg: the server is a decode node; every fresh prompt (min_prefill_tokens 1) goes to a
# prefill node, which the nemesis SIGKILLs (and starts again at the same door) or SIGSTOPs
# past the heartbeat timeout. Either must cost a local prefill: the same text, no error.
DISAGG_ENV = {
    "INFERFLUX_CLUSTER_MIN_PREFILL_TOKENS": "1",
    "INFERFLUX_CLUSTER_HEARTBEAT_S": "0.25",
    "INFERFLUX_CLUSTER_DOWN_AFTER_S": "1.5",
}


class PrefillNode:
    """The prefill node of --disagg, started again at the same door after each SIGKILL."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self.door = f"tcp://127.0.0.1:{free_port()}"
        self.starts = 0
        self.pids: set[int] = set()
        self.server = self._start()

    def _start(self) -> Server:
        self.starts += 1
        log = f"{self.log_path}.prefill-{self.starts}"
        server = Server(log, DISAGG_ENV, "", "--role", "prefill", "--cluster-listen", self.door)
        server.wait_ready()
        self.pids |= process_pids(server.snapshot())
        return server

    def kill_and_restart(self) -> None:
        os.kill(self.server.process.pid, signal.SIGKILL)
        self.server.stop()
        self.server = self._start()


async def drive(url: str, model: str, jobs: list[Job], concurrency: int, report: Report) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    limiter = trio.Semaphore(concurrency)

    async def one(job: Job) -> None:
        async with limiter:
            outcome = await run_job(client, model, job)
            report.outcomes.setdefault(job.index, []).append(outcome)

    async with trio.open_nursery() as nursery:
        for job in jobs:
            nursery.start_soon(one, job)


async def run_job(client: openai.AsyncOpenAI, model: str, job: Job) -> Outcome:
    messages = [{"role": "user", "content": job.prompt}]
    kwargs = dict(model=model, messages=messages, max_tokens=job.max_tokens, **job.sampling)
    try:
        if not job.stream:
            reply = await client.chat.completions.create(**kwargs)
            choice = reply.choices[0]
            return Outcome(
                "completed",
                choice.message.content or "",
                choice.finish_reason,
                reply.usage.completion_tokens,
            )
        parts, finish, tokens, chunks = [], "", 0, 0
        stream = await client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
        async with stream:
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                    chunks += 1
                    if job.hang_up_after and chunks >= job.hang_up_after:
                        return Outcome("hung_up", "".join(parts))
                if chunk.usage:
                    tokens = chunk.usage.completion_tokens
        return Outcome("completed", "".join(parts), finish, tokens)
    except (openai.APIError, httpx.HTTPError) as exc:
        return Outcome("error", detail=f"{type(exc).__name__}: {exc}")


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


def ipc_files() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "*inferflux*.sock")))


def process_pids(tree: ActorInfo) -> set[int]:
    """The pids of every process actor (the worker, and the isolated scheduler/policy)."""
    return {info.pid for info in tree.walk() if info.kind == "process" and info.pid}


def worker_pids_alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if re.search(rb"inferflux-(worker|scheduler|policy)", f.read()):
                    alive.add(pid)
        except OSError:
            pass
    return alive


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


def summarize(faults: list[str]) -> str:
    counts: dict[str, int] = {}
    for f in faults:
        key = f.split("(")[0]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def check_job(job: Job, outcomes: list[Outcome], ref: Outcome | None) -> list[str]:
    if len(outcomes) != 1:
        return [f"request {job.index}: {len(outcomes)} terminal outcomes"]
    got = outcomes[0]
    if got.kind == "error":
        return [f"request {job.index}: error {got.detail}"]
    if got.kind == "hung_up" or ref is None:
        return []
    if got.text == ref.text and got.completion_tokens == ref.completion_tokens:
        if got.finish_reason != ref.finish_reason:
            return [f"request {job.index}: finish {got.finish_reason} != {ref.finish_reason}"]
        if "response_format" in job.sampling and got.finish_reason == "stop":
            try:
                json.loads(got.text)
            except ValueError:
                return [f"request {job.index}: constrained output is not JSON: {got.text!r}"]
        return []
    kind = "lost" if len(got.text) < len(ref.text) else "dup"
    return [
        f"{kind} tokens in request {job.index} ({got.completion_tokens} vs {ref.completion_tokens}"
        f" tokens): got {got.text[:80]!r}... expected {ref.text[:80]!r}..."
    ]


def check_disagg(server: Server, prefill: PrefillNode) -> list[str]:
    """Both paths ran: prompts computed on the prefill node, and local prefills after its
    failures (and no prefill node left stuck on anything)."""
    paths: dict[str, float] = {}
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("inferflux:disagg_requests_total{"):
            paths[line.split('path="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
    print(f"chaos: prompts computed by path: {paths}; prefill node started {prefill.starts}x")
    problems = []
    if not paths.get("remote"):
        problems.append("no prompt was computed on the prefill node")
    tree = prefill.server.snapshot()
    scheduler = tree.find("scheduler")
    if scheduler is None or scheduler.details.get("running") or scheduler.details.get("waiting"):
        problems.append(f"prefill node not quiescent: {scheduler and scheduler.details}")
    return problems


def check_quiescence(server: Server) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        tree = server.snapshot()
        scheduler = tree.find("scheduler")
        worker = tree.find("worker-0")
        busy = (
            scheduler is None
            or scheduler.details.get("running")
            or scheduler.details.get("waiting")
        )
        if not busy and worker is not None and worker.state == "running":
            break
        if time.monotonic() > deadline:
            return [
                f"not quiescent 30 s after the load: scheduler {scheduler and scheduler.details}"
            ]
        time.sleep(0.5)
    problems = []
    engine = tree.find("engine")
    # A supervisor its parent restarted gave up: more restarts than its intensity allows.
    for info in tree.walk():
        if info.kind == "supervisor" and info.restarts and info is not tree:
            problems.append(f"supervisor {info.name!r} gave up {info.restarts} time(s)")
    if tree.state != "running" or engine is None or engine.state != "running":
        problems.append(
            f"tree not healthy at the end: root {tree.state}, engine {engine and engine.state}"
        )
    return problems


if __name__ == "__main__":
    sys.exit(main())
