"""Scheduler behaviour without a model.

The device worker is replaced by ScriptedWorker, a real actor that follows the worker's
message protocol (Attach/Admit/Cancel -> WorkerReady/StepResult) but "generates" a token
that is a pure function of the tokens before it. That keeps these tests fast and exact: a
sequence re-admitted by recompute must continue with exactly the tokens an undisturbed run
produces. (The issue asks for scheduler tests that use no model; the real worker is covered
by the integration tests.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio

from actors import Actor, ActorRef, ChildSpec, Envelope, Registry, Rejected, Supervisor
from inferflux.kvcache import staging
from inferflux.messages import (
    Admit,
    Attach,
    Cancel,
    ImageInput,
    KVState,
    SamplingParams,
    SeqOutput,
    StepResult,
    WorkerReady,
)
from inferflux.metrics import Metrics
from inferflux.scheduler.actor import Scheduler
from inferflux.scheduler.messages import Abort, Delta, NotReady, Overloaded, Submit
from inferflux.scheduler.meter import MetricsActor


class CrashNow(msgspec.Struct):
    pass


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 31 + len(tokens)) % 50_000


class ScriptedWorker(Actor):
    def __init__(self, name: str, step_tokens: int = 8, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.step_tokens = step_tokens
        self.step_s = 0.0  # the step time it reports (its real steps take ~2 ms)
        self.seqs: dict[int, dict[str, Any]] = {}
        self.port: Envelope | None = None
        self.admitted: list[Admit] = []
        self.steps = 0
        self.images = 0  # encoded (as the real worker reports them: 0.25 s each)

    async def started(self) -> None:
        self.nursery.start_soon(self._loop)

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        match message:
            case Attach():
                envelope.defer()
                self.port = envelope
                envelope.send(WorkerReady())
            case Admit():
                self.admitted.append(message)
                self.images += len(message.images)
                self.seqs[message.seq_id] = {
                    "tokens": list(message.tokens),
                    "n_past": message.n_cached,
                    "prompt_len": len(message.tokens),
                    "generated": message.n_generated,
                    "max": message.sampling.max_tokens,
                    "cancel": False,
                    "export_to": message.export_to,
                }
            case Cancel(seq_id):
                if seq_id in self.seqs:
                    self.seqs[seq_id]["cancel"] = True
            case CrashNow():
                raise RuntimeError("scripted crash")

    async def _loop(self) -> None:
        while True:
            await trio.sleep(0.002)
            if not self.seqs or self.port is None:
                continue
            outputs, budget = [], self.step_tokens
            for seq_id, s in list(self.seqs.items()):
                if s["cancel"]:
                    del self.seqs[seq_id]
                    outputs.append(SeqOutput(seq_id, [], "", "cancelled", 0, s["n_past"]))
                    continue
                prefill = min(s["prompt_len"] - s["n_past"], budget)
                if prefill > 0:
                    s["n_past"] += prefill
                    budget -= prefill
                    if s["n_past"] < s["prompt_len"]:
                        outputs.append(SeqOutput(seq_id, [], "", None, prefill, s["n_past"]))
                        continue
                token = next_token(s["tokens"])
                s["tokens"].append(token)
                s["generated"] += 1
                done = s["generated"] >= s["max"]
                if not done:
                    s["n_past"] += 0 if prefill else 1
                else:
                    del self.seqs[seq_id]
                state = export(s["export_to"], s["n_past"]) if s["export_to"] and done else None
                outputs.append(
                    SeqOutput(
                        seq_id,
                        [token],
                        f"<{token}>",
                        "length" if done else None,
                        max(prefill, 0),
                        s["n_past"],
                        kv_state=state,
                    )
                )
            self.steps += 1
            images, self.images = self.images, 0
            result = StepResult(self.steps, len(outputs), len(outputs), self.step_s, outputs)
            self.port.send(msgspec.structs.replace(result, images_encoded=images,
                                                   encode_s=0.25 * images))  # fmt: skip


def export(name: str, n_tokens: int) -> KVState:
    """A prefill job's "KV state": a real staging file of as many bytes as the prompt
    has tokens (the kvcache actors hand it over as they would a real one)."""
    data = bytes(range(256)) * (n_tokens // 256 + 1)

    def fill(buffer: Any) -> int:
        buffer[:n_tokens] = data[:n_tokens]
        return n_tokens

    size = staging.write(name, n_tokens, fill)
    return KVState("", n_tokens, name, size, staging.host_id())


def expected_tokens(prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


class Harness:
    def __init__(
        self,
        n_slots: int = 2,
        max_waiting: int = 64,
        extra: list[ChildSpec] = (),
        n_workers: int = 1,
        **options: Any,
    ) -> None:
        self.registry = Registry()
        self.workers: list[ScriptedWorker] = []  # every one started, restarts included
        names = ["worker"] if n_workers == 1 else [f"worker-{i}" for i in range(n_workers)]

        def make_worker(name: str) -> ScriptedWorker:
            worker = ScriptedWorker(name, in_registry=self.registry)
            self.workers.append(worker)
            return worker

        self.scheduler = Scheduler(
            "scheduler",
            workers=names,
            n_slots=n_slots,
            cells_per_slot=4096,
            meter="metrics",
            max_waiting=max_waiting,
            in_registry=self.registry,
            **options,
        )
        self.metrics = Metrics("scripted")
        self.root = Supervisor(
            "root",
            [
                *extra,
                *[ChildSpec(name, lambda name=name: make_worker(name)) for name in names],
                ChildSpec(
                    "metrics",
                    lambda: MetricsActor(
                        "metrics", metrics=self.metrics, in_registry=self.registry
                    ),
                ),
                ChildSpec("scheduler", lambda: self.scheduler),
            ],
        )
        self.ref = ActorRef("scheduler", self.registry)
        self.finished: list[int] = []

    def _make_metrics(self) -> MetricsActor:
        return MetricsActor("metrics", metrics=self.metrics, in_registry=self.registry)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Run the tree; the body's nursery holds the clients; stop the tree after them."""
        async with trio.open_nursery() as outer:
            await outer.start(self.root.run)
            await wait_for(self.scheduler.ready.is_set)
            async with trio.open_nursery() as clients:
                yield clients
            self.root.request_stop()

    async def generate(
        self,
        seq_id: int,
        prompt: list[int],
        max_tokens: int,
        priority: int = 0,
        principal: str = "anonymous",
    ) -> tuple[list[int], str]:
        tokens, reason = [], ""
        sampling = SamplingParams(max_tokens=max_tokens)
        submit = Submit(seq_id, prompt, sampling, priority, principal=principal)
        async with self.ref.stream(submit) as deltas:
            async for delta in deltas:
                assert isinstance(delta, Delta)
                tokens.extend(delta.token_ids)
                if delta.finish_reason:
                    reason = delta.finish_reason
                    assert delta.completion_tokens == len(tokens)
        self.finished.append(seq_id)
        return tokens, reason


async def wait_for(predicate, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.002)


async def test_fcfs_with_priority_and_preemption_by_recompute() -> None:
    h = Harness(n_slots=1)
    results: dict[int, list[int]] = {}
    async with h.running() as nursery:

        async def run(seq_id: int, prompt: list[int], n: int, priority: int = 0) -> None:
            tokens, reason = await h.generate(seq_id, prompt, n, priority)
            assert reason == "length"
            results[seq_id] = tokens

        nursery.start_soon(run, 1, [1, 2, 3], 200)
        await wait_for(lambda: 1 in h.scheduler.running and h.scheduler.running[1].generated)
        nursery.start_soon(run, 2, [4, 5], 5)
        await wait_for(lambda: len(h.scheduler.waiting) == 1)
        nursery.start_soon(run, 3, [6], 5, 10)  # higher priority: preempts 1
    assert h.finished == [3, 1, 2]
    assert results[1] == expected_tokens([1, 2, 3], 200)  # no lost, no duplicated token
    assert results[2] == expected_tokens([4, 5], 5)
    readmits = [a for a in h.workers[0].admitted if a.seq_id == 1]
    assert len(readmits) == 2 and readmits[1].n_generated > 0


async def test_abort_frees_the_slot_for_the_next_request() -> None:
    h = Harness(n_slots=1)
    async with h.running() as nursery:

        async def abandoned() -> None:
            with trio.move_on_after(0.05):
                await h.generate(1, [1], 100_000)

        nursery.start_soon(abandoned)
        await trio.sleep(0.01)
        tokens, reason = await h.generate(2, [2], 3)  # waits for the slot, then runs
        assert reason == "length" and tokens == expected_tokens([2], 3)
        await h.ref.cast(Abort(999))  # unknown ids are ignored
        await wait_for(lambda: not h.scheduler.running)
        assert h.scheduler.kv[0].state == ["cached"]


async def test_worker_crash_readmits_every_stream_by_recompute() -> None:
    h = Harness(n_slots=4)
    results: dict[int, list[int]] = {}
    async with h.running() as nursery:

        async def run(seq_id: int) -> None:
            results[seq_id], _ = await h.generate(seq_id, [seq_id, 7], 300)

        for i in range(1, 6):  # 5 requests on 4 slots: one waits
            nursery.start_soon(run, i)
        await wait_for(lambda: sum(len(r.generated) for r in h.scheduler.running.values()) > 100)
        await ActorRef("worker", h.registry).cast(CrashNow())
        await wait_for(lambda: len(h.workers) == 2)
    for i in range(1, 6):
        assert results[i] == expected_tokens([i, 7], 300)
    assert h.scheduler.worker_restarts == 1
    assert any(a.n_generated > 0 for a in h.workers[1].admitted)


async def test_two_workers_share_the_load_and_a_crash_costs_only_its_own_streams() -> None:
    """Fresh prompts spread over both workers; a shared prefix goes where it is cached;
    when worker-1 dies only its streams are recomputed (on whichever worker is ready),
    worker-0's run on undisturbed, and every text is exact."""
    h = Harness(n_slots=3, n_workers=2)
    results: dict[int, list[int]] = {}
    async with h.running() as nursery:
        await wait_for(lambda: all(h.scheduler.kv.attached))

        async def run(seq_id: int, prompt: list[int], n: int) -> None:
            results[seq_id], _ = await h.generate(seq_id, prompt, n)

        for i in range(1, 5):
            nursery.start_soon(run, i, [i, 7], 300)
        await wait_for(lambda: len(h.scheduler.running) == 4)
        placed = {r.seq_id: r.worker for r in h.scheduler.running.values()}
        assert sorted(placed.values()) == [0, 0, 1, 1]
        await wait_for(lambda: sum(len(r.generated) for r in h.scheduler.running.values()) > 80)
        await ActorRef("worker-1", h.registry).cast(CrashNow())
        await wait_for(lambda: len(h.workers) == 3)  # worker-1 again
    for i in range(1, 5):
        assert results[i] == expected_tokens([i, 7], 300)
    first0, first1 = h.workers[0], h.workers[1]
    assert first0.name == "worker-0" and first1.name == "worker-1"
    on_0 = [seq for seq, worker in placed.items() if worker == 0]
    # worker-0's streams were admitted once; worker-1's again (recompute), somewhere.
    assert sorted(a.seq_id for a in first0.admitted if a.n_generated == 0) == sorted(on_0)
    assert not any(a.seq_id in on_0 for a in h.workers[2].admitted)
    recomputed = [a for w in (first0, h.workers[2]) for a in w.admitted if a.n_generated > 0]
    assert sorted(a.seq_id for a in recomputed) == sorted(set(placed) - set(on_0))
    assert h.scheduler.worker_restarts == 1


async def test_full_queue_answers_overloaded() -> None:
    h = Harness(n_slots=1, max_waiting=1)
    async with h.running() as nursery:
        nursery.start_soon(h.generate, 1, [1], 50)
        await wait_for(lambda: bool(h.scheduler.running))
        nursery.start_soon(h.generate, 2, [2], 5)
        await wait_for(lambda: len(h.scheduler.waiting) == 1)
        with pytest.raises(Rejected) as refused:
            await h.generate(3, [3], 5)
        assert isinstance(refused.value.error, Overloaded)


async def test_principals_take_turns_in_the_waiting_queue() -> None:
    """One key with many requests waiting does not make another wait behind all of them."""
    h = Harness(n_slots=1)
    async with h.running() as nursery:
        nursery.start_soon(h.generate, 100, [1], 40, 0, "key:a")
        await wait_for(lambda: bool(h.scheduler.running))
        for i in range(1, 7):
            nursery.start_soon(h.generate, i, [i], 3, 0, "key:a")
            await wait_for(lambda n=i: len(h.scheduler.waiting) == n)
        for i in (101, 102):
            nursery.start_soon(h.generate, i, [i], 3, 0, "key:b")
            await wait_for(lambda n=i: len(h.scheduler.waiting) == n - 94)
    # a's turn was the running request: b goes next, then they alternate
    assert h.finished[:6] == [100, 101, 1, 102, 2, 3]


async def test_a_principal_gets_its_share_of_the_queue_not_all_of_it() -> None:
    h = Harness(n_slots=1, max_waiting=8)  # a share of 2 each
    async with h.running() as nursery:
        nursery.start_soon(h.generate, 1, [1], 40, 0, "key:a")
        await wait_for(lambda: bool(h.scheduler.running))
        for i in (2, 3):
            nursery.start_soon(h.generate, i, [i], 3, 0, "key:a")
        await wait_for(lambda: len(h.scheduler.waiting) == 2)
        with pytest.raises(Rejected, match="key:a already has 2") as refused:
            await h.generate(4, [4], 3, 0, "key:a")
        assert isinstance(refused.value.error, Overloaded)
        tokens, _ = await h.generate(5, [5], 3, 0, "key:b")  # b still gets in
        assert tokens == expected_tokens([5], 3)


class NeverReadyWorker(ScriptedWorker):
    """A replacement worker that never finishes starting (a crash loop, a hung load)."""

    async def started(self) -> None:
        await trio.sleep_forever()


async def test_requests_get_503_when_the_worker_stays_down() -> None:
    registry = Registry()
    made: list[ScriptedWorker] = []

    def make_worker() -> ScriptedWorker:
        cls = ScriptedWorker if not made else NeverReadyWorker
        made.append(cls("worker", in_registry=registry))
        return made[-1]

    scheduler = Scheduler(
        "scheduler",
        workers=["worker"],
        n_slots=2,
        cells_per_slot=4096,
        worker_wait_s=0.3,
        in_registry=registry,
    )
    root = Supervisor(
        "root", [ChildSpec("worker", make_worker), ChildSpec("scheduler", lambda: scheduler)]
    )
    ref = ActorRef("scheduler", registry)
    outcome: list[BaseException] = []

    async def streaming_client() -> None:
        try:
            async with ref.stream(Submit(1, [1, 2], SamplingParams(max_tokens=10_000))) as deltas:
                async for _ in deltas:
                    pass
        except Rejected as exc:
            assert isinstance(exc.error, NotReady)
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(root.run)
        await wait_for(scheduler.ready.is_set)
        nursery.start_soon(streaming_client)
        await wait_for(
            lambda: (
                bool(scheduler.running) and bool(next(iter(scheduler.running.values())).generated)
            )
        )
        await ActorRef("worker", registry).cast(CrashNow())
        await wait_for(lambda: bool(outcome), timeout_s=5)  # the stream ends with a 503
        assert "down for" in str(outcome[0])
        with pytest.raises(Rejected, match="down for"):  # new requests are refused at once
            async with ref.stream(Submit(2, [3], SamplingParams(max_tokens=5))) as deltas:
                async for _ in deltas:
                    pass
        root.request_stop()


async def test_numbers_reach_prometheus_as_reports_to_the_metrics_actor() -> None:
    """The scheduler holds no prometheus object: MeterReports to `metrics` carry them."""
    h = Harness(n_slots=2)
    async with h.running() as nursery:
        for seq_id in (1, 2, 3):
            nursery.start_soon(h.generate, seq_id, [seq_id, 7], 5)
    registry = h.metrics.registry
    labels = {"model": "scripted", "role": "unified"}
    assert registry.get_sample_value("inferflux:generation_tokens_total", labels) == 15
    assert registry.get_sample_value("inferflux:prompt_tokens_total", labels) == 6
    finished = {**labels, "finished_reason": "length"}
    assert registry.get_sample_value("inferflux:request_success_total", finished) == 3
    assert registry.get_sample_value("inferflux:e2e_request_latency_seconds_count", labels) == 3
    assert registry.get_sample_value("inferflux:num_requests_running", labels) == 0
    assert h.scheduler.details()["ready"] == 1


async def test_the_workers_image_encode_time_reaches_prometheus() -> None:
    h = Harness(n_slots=2)
    image = ImageInput("d", 2, 2, bytes(12), [(1, 2)])
    submit = Submit(1, [5, -9, -9, 6], SamplingParams(max_tokens=2), images=[image, image])
    labels = {"model": "scripted", "role": "unified"}
    get = h.metrics.registry.get_sample_value
    async with h.running():
        async with h.ref.stream(submit) as deltas:
            async for _ in deltas:
                pass
        await wait_for(lambda: get("inferflux:image_encode_seconds_count", labels))
    assert get("inferflux:image_encode_seconds_count", labels) == 2  # two images, each 0.25 s
    assert get("inferflux:image_encode_seconds_sum", labels) == 0.5
    assert get("inferflux:image_encode_seconds_bucket", {**labels, "le": "0.1"}) == 0
    assert get("inferflux:image_encode_seconds_bucket", {**labels, "le": "0.25"}) == 2
