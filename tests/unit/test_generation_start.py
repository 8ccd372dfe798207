"""The ingress's side of a generation when the scheduler is restarting at the moment a
request arrives (the soak run of issue 18 caught one such request answered 503): it waits
for the scheduler, within the same window as a stream resumed mid-way, and is served.
A scheduler that stays away past the window is a 503. Real actors: the scheduler of
test_scheduler.py with its scripted worker."""

from __future__ import annotations

import pytest
import trio

from actors import ActorRef, ChildSpec
from inferflux.ingress import generation
from inferflux.ingress.errors import APIError
from inferflux.ingress.generation import Generation, InFlight
from inferflux.messages import SamplingParams
from inferflux.scheduler.actor import Scheduler
from inferflux.scheduler.messages import Submit
from tests.unit.test_scheduler import Harness, expected_tokens


async def test_a_request_arriving_while_the_scheduler_restarts_waits_for_it() -> None:
    h = Harness()
    async with h.running() as nursery:
        await h.root.stop_child("scheduler")  # away, as between a crash and its restart

        def fresh() -> Scheduler:
            return Scheduler("scheduler", workers=["worker"], n_slots=2, cells_per_slot=4096,
                             in_registry=h.registry)  # fmt: skip

        async def back_soon() -> None:
            await trio.sleep(0.5)
            await h.root.start_child(ChildSpec("scheduler", fresh))

        nursery.start_soon(back_soon)
        submit = Submit(1, [1, 2, 3], SamplingParams(max_tokens=4))
        g = Generation(ActorRef("scheduler", h.registry), submit, InFlight())
        await g.start()
        tokens = [t async for delta in g.deltas() for t in delta.token_ids]
        await g.close()
    assert tokens == expected_tokens([1, 2, 3], 4)


async def test_a_scheduler_away_past_the_window_is_a_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation, "RESUBMIT_WINDOW_S", 0.3)
    h = Harness()
    async with h.running():
        await h.root.stop_child("scheduler")
        submit = Submit(1, [1], SamplingParams())
        g = Generation(ActorRef("scheduler", h.registry), submit, InFlight())
        with pytest.raises(APIError) as refused:
            await g.start()
    assert refused.value.status == 503
