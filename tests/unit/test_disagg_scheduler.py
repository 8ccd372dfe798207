"""Disaggregated prefill in the decode node's scheduler (issue 14), without a model: the
scripted worker of test_scheduler.py on both sides, a prefill scheduler standing for the
prefill node (over a node link in production; tests/integration/test_disagg.py runs the
real thing). A long prompt is prefilled there and decoded here with the same tokens as
unified; a short one stays here; a prefill node that refuses or is too slow costs a local
prefill and no error, and is avoided for a while; one with a backlog refuses at once and
is asked again next time; peers are found by name in the registry as they come and go; a
client that leaves during the remote prefill frees its slot. Real kvcache actors hand the
states over (one host: the file itself; `elsewhere`: pulled in chunks), and every staging
file is released once the decode worker has it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors import ChildSpec, Envelope
from inferflux.kvcache import staging
from inferflux.kvcache.actor import KVCache
from inferflux.messages import ImageInput, SamplingParams
from inferflux.scheduler.actor import Scheduler
from inferflux.scheduler.messages import Submit
from tests.unit.test_scheduler import Harness, ScriptedWorker, expected_tokens, wait_for

LONG = list(range(1, 41))  # 40 uncached tokens: remote (min_prefill_tokens 16)
SHORT = [7, 8, 9]


class SlowWorker(ScriptedWorker):
    """A prefill worker that holds its Admits for `delay_s` (a busy or hung node)."""

    def __init__(self, name: str, delay_s: float, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.delay_s = delay_s

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        await trio.sleep(self.delay_s)
        return await super().handle(message, envelope)


class DisaggHarness(Harness):
    """The decode scheduler finds its prefill peers by name prefix in its registry:
    `prefill-0` here, a scheduler with a scripted worker (`refusing`: with no worker at
    all, so it refuses every job as not ready)."""

    def __init__(
        self,
        prefill_delay_s: float = 0.0,
        timeout_s: float = 5.0,
        refusing: bool = False,
        prefill_step_s: float = 0.0,
        elsewhere: bool = False,
    ) -> None:
        self.prefill_workers: list[ScriptedWorker] = []

        def make_prefill_worker() -> ScriptedWorker:
            worker = SlowWorker("pworker", prefill_delay_s, in_registry=self.registry)
            worker.step_s = prefill_step_s
            self.prefill_workers.append(worker)
            return worker

        def make_prefill_scheduler() -> Scheduler:
            return Scheduler(
                "prefill-0", workers=["nobody" if refusing else "pworker"], n_slots=2,
                cells_per_slot=4096, worker_wait_s=0.0, in_registry=self.registry,
                kvcache="kvcache@prefill-0",
            )  # fmt: skip

        # The decode node's kvcache, on another host when `elsewhere` (it pulls then).
        def make_kvcache() -> KVCache:
            host = "another host" if elsewhere else ""
            return KVCache(host=host, chunk_bytes=7, window=3, in_registry=self.registry)

        super().__init__(
            extra=[
                ChildSpec("kvcache", make_kvcache),
                ChildSpec(
                    "kvcache@prefill-0",
                    lambda: KVCache("kvcache@prefill-0", in_registry=self.registry),
                ),  # fmt: skip
                ChildSpec("pworker", make_prefill_worker),
                # temporary: a stopped one stays stopped (a peer that left)
                ChildSpec("prefill-0", make_prefill_scheduler, restart="temporary"),
            ],
            prefill_prefix="prefill-",
            min_prefill_tokens=16,
            prefill_timeout_s=timeout_s,
        )


def count(h: Harness, path: str) -> float:
    labels = {**h.metrics.labels, "path": path}
    return h.metrics.registry.get_sample_value("inferflux:disagg_requests_total", labels) or 0.0


@pytest.mark.parametrize("elsewhere", [False, True], ids=["one host", "pulled"])
async def test_a_long_prompt_is_prefilled_remotely_and_decoded_here_identically(
    elsewhere: bool,
) -> None:
    h = DisaggHarness(elsewhere=elsewhere)
    async with h.running():
        await wait_for(lambda: h.prefill_workers and h.prefill_workers[0].port is not None)
        tokens, reason = await h.generate(1, LONG, 12)
        short, _ = await h.generate(2, SHORT, 5)
        await wait_for(lambda: count(h, "remote") == 1 and count(h, "local") == 1)
        here = {a.seq_id: a for a in h.workers[0].admitted}
        [job] = h.prefill_workers[0].admitted  # the long prompt only
        # Released once the worker had it: the prefill node's file and, pulled, the copy.
        await wait_for(lambda: not staging.exists(job.export_to))
        assert here[1].kv_state is not None
        await wait_for(lambda: not staging.exists(here[1].kv_state.name))
        kvcache = h.root.child("kvcache").details()
    assert (tokens, reason) == (expected_tokens(LONG, 12), "length")
    assert short == expected_tokens(SHORT, 5)
    assert job.export_to and job.sampling.max_tokens == 1 and job.tokens == LONG
    resumed = here[1]
    assert resumed.kv_state is not None and resumed.kv_state.n_tokens == len(LONG)
    assert resumed.n_cached == len(LONG) and resumed.n_generated == 1
    assert resumed.tokens == LONG + tokens[:1]
    assert here[2].kv_state is None  # short: prefilled here
    if elsewhere:  # 40 bytes in chunks of 7, three in flight, into a file of its own
        assert resumed.kv_state.name != job.export_to
        assert (kvcache["pulled"], kvcache["pulled_bytes"]) == (1, 40)
    else:  # one host: the worker maps the prefill node's own file
        assert resumed.kv_state.name == job.export_to and kvcache["pulled"] == 0


async def test_a_prompt_with_images_goes_to_the_prefill_node_with_them() -> None:
    image = ImageInput("d", 2, 2, bytes(12), [(1, 2)])
    prompt = [LONG[0], -9, -9, *LONG[1:]]
    h = DisaggHarness()
    async with h.running():
        await wait_for(lambda: h.prefill_workers and h.prefill_workers[0].port is not None)
        tokens: list[int] = []
        submit = Submit(1, prompt, SamplingParams(max_tokens=6), images=[image])
        async with h.ref.stream(submit) as deltas:
            async for delta in deltas:
                tokens += delta.token_ids
        await wait_for(lambda: count(h, "remote") == 1)
    assert tokens == expected_tokens(prompt, 6)
    [job] = h.prefill_workers[0].admitted
    assert job.images == [image] and job.tokens == prompt
    [resumed] = h.workers[0].admitted  # decoded here from the state: nothing to encode
    assert resumed.kv_state is not None and resumed.images == []


async def test_a_backed_up_prefill_node_refuses_at_once_and_stays_in_use() -> None:
    """The prefill node computes 80 prompt tokens a second (8 a step of 0.1 s, as its
    worker reports them) and a decode node waits 1 s for a prefill: one 40-token prompt
    (0.5 s) fits, two (1 s) do not. The second long prompt, sent while the first is still
    there, is refused at once and prefilled here (no time-out, no fallback, the peer not
    avoided); once the backlog is gone the peer is used again."""
    h = DisaggHarness(prefill_delay_s=0.3, timeout_s=1.0, prefill_step_s=0.1)
    async with h.running():
        await wait_for(lambda: h.prefill_workers and h.prefill_workers[0].port is not None)
        await h.generate(1, LONG[2:], 6)  # its speed is measured from here on
        async with trio.open_nursery() as clients:
            clients.start_soon(h.generate, 2, LONG, 6)
            await wait_for(lambda: h.scheduler.details()["remote_prefills"] == 1)
            with trio.fail_after(0.25):  # before the first one's prefill is even admitted
                refused, _ = await h.generate(3, LONG[::-1], 6)
        again, _ = await h.generate(4, LONG[1:], 6)
        await wait_for(lambda: count(h, "remote") == 3)
    assert refused == expected_tokens(LONG[::-1], 6) and again == expected_tokens(LONG[1:], 6)
    assert count(h, "local") == 1 and count(h, "fallback") == 0
    assert len(h.prefill_workers[0].admitted) == 3  # the refused one never got there


async def test_a_refusing_peer_costs_a_local_prefill_then_is_avoided() -> None:
    h = DisaggHarness(refusing=True)
    async with h.running():
        first, _ = await h.generate(1, LONG, 6)
        second, _ = await h.generate(2, LONG[::-1], 6)
        await wait_for(lambda: count(h, "fallback") == 1)
    assert first == expected_tokens(LONG, 6) and second == expected_tokens(LONG[::-1], 6)
    assert count(h, "remote") == 0 and count(h, "local") == 1  # the second: peer avoided
    assert all(a.kv_state is None for a in h.workers[0].admitted)
    assert not h.scheduler.running and h.scheduler.kv.running == 0


async def test_peers_come_and_go_with_their_names_in_the_registry() -> None:
    h = DisaggHarness()
    async with h.running():
        await wait_for(lambda: h.prefill_workers and h.prefill_workers[0].port is not None)
        assert h.scheduler.peers.names == ["prefill-0"]
        h.root.child("prefill-0").request_stop()  # e.g. its node link closed
        await wait_for(lambda: h.scheduler.peers.names == [])
        tokens, _ = await h.generate(1, LONG, 6)  # no peer: prefilled here, no attempt
    assert tokens == expected_tokens(LONG, 6)
    assert len(h.prefill_workers[0].admitted) == 0 and count(h, "fallback") == 0


async def test_a_prefill_node_too_slow_costs_a_local_prefill() -> None:
    h = DisaggHarness(prefill_delay_s=1.0, timeout_s=0.3)
    async with h.running():
        tokens, reason = await h.generate(1, LONG, 6)
        await wait_for(lambda: count(h, "fallback") == 1)
    assert (tokens, reason) == (expected_tokens(LONG, 6), "length")


async def test_a_prefill_node_is_waited_for_as_long_as_prefilling_here_would_take() -> None:
    """The time-out (0.3 s) is shorter than the peer takes (1 s), but this node measured its
    own prefill at 6 tokens a second (a 3-token prompt in a step its worker reports as
    0.5 s): the 40-token prompt would take it ~6.7 s here, so the peer is worth waiting for."""
    h = DisaggHarness(prefill_delay_s=1.0, timeout_s=0.3)
    async with h.running():
        await wait_for(lambda: h.prefill_workers and h.prefill_workers[0].port is not None)
        await wait_for(lambda: h.workers and h.workers[0].port is not None)
        h.workers[0].step_s = 0.5
        await h.generate(1, SHORT, 2)  # prefilled here (too short to send): measures it
        tokens, reason = await h.generate(2, LONG, 6)
        await wait_for(lambda: count(h, "remote") == 1)
    assert (tokens, reason) == (expected_tokens(LONG, 6), "length")
    assert count(h, "fallback") == 0 and len(h.prefill_workers[0].admitted) == 1


async def test_a_client_leaving_during_the_remote_prefill_frees_its_slot() -> None:
    h = DisaggHarness(prefill_delay_s=0.5)
    async with h.running():
        with trio.move_on_after(0.1):
            await h.generate(1, LONG, 6)  # the client hangs up mid-way
        await wait_for(lambda: not h.scheduler.running, timeout_s=5)
        assert h.scheduler.kv.running == 0
        tokens, _ = await h.generate(2, SHORT, 3)  # and the server goes on
    assert tokens == expected_tokens(SHORT, 3)
