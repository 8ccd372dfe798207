"""max_concurrent: generations of a principal running at once, counted at Authorize and
given back by Settle, also when the ingress never heard the answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from actors import ActorRef, Registry
from inferflux.ingress import policy_client
from inferflux.ingress.context import RequestContext
from inferflux.ingress.errors import APIError
from inferflux.ingress.pipeline import Prepared
from inferflux.ingress.policy_gate import PolicyGate
from inferflux.ingress.served import ServedModel
from inferflux.messages import SamplingParams
from inferflux.policy import ops
from inferflux.policy.actor import PolicyActor
from inferflux.policy.concurrency import Concurrency
from inferflux.policy.guardrails import Blocklist, OPAClient
from inferflux.policy.messages import Settle
from inferflux.policy.records import Grant, merge
from tests.policy_support import OPAServer
from tests.unit.test_policy_engine import MODEL, ask, policy, store_with


def solo(tmp_path: Path, most: int = 1) -> tuple[object, str]:
    store, keys = store_with(
        tmp_path, solo=ops.KeyRequest(name="solo", scopes=["generate"], max_concurrent=most)
    )
    return store, keys["solo"]


async def test_a_principal_runs_at_most_max_concurrent_generations(tmp_path: Path) -> None:
    store, key = solo(tmp_path, 2)
    p = policy(store)
    first = await p.authorize(ask(key, seq_id=1))
    assert first.allowed
    assert (await p.authorize(ask(key, seq_id=2))).allowed
    over = await p.authorize(ask(key, seq_id=3))
    assert (over.status, over.code, over.retry_after_s) == (429, "concurrency_limit_exceeded", 1)
    assert "limit of 2 at once" in over.reason
    never = await p.authorize(ask(key, seq_id=4, choices=3))  # n=3 can never fit in 2
    assert (never.status, never.code, never.param) == (400, "concurrency_exceeds_limit", "n")
    p.settle(Settle(principal=first.principal, reserved_tokens=0, used_tokens=0, seq_id=1))
    p.settle(Settle(principal=first.principal, reserved_tokens=0, used_tokens=0, seq_id=1))
    assert (await p.authorize(ask(key, seq_id=5))).allowed  # one place back, exactly one
    assert (await p.authorize(ask(key, seq_id=6))).status == 429


async def test_without_a_limit_or_with_auth_off_nothing_is_refused(tmp_path: Path) -> None:
    store, keys = store_with(tmp_path, free=ops.KeyRequest(name="free", scopes=["generate"]))
    for p, key in ((policy(store), keys["free"]), (policy(None, auth_required=False), "")):
        decisions = [await p.authorize(ask(key, seq_id=i, choices=4)) for i in range(50)]
        assert all(d.allowed for d in decisions)


async def test_an_abandoned_admission_never_holds_a_place(tmp_path: Path) -> None:
    store, key = solo(tmp_path)
    p = policy(store)
    abandon = Settle(principal="", reserved_tokens=0, used_tokens=0, seq_id=7, abandoned=True)
    p.settle(abandon)  # before the decision: it must not count
    assert (await p.authorize(ask(key, seq_id=7))).code == "abandoned"
    assert (await p.authorize(ask(key, seq_id=8))).allowed
    p.settle(Settle(principal="", reserved_tokens=0, used_tokens=0, seq_id=8, abandoned=True))
    assert (await p.authorize(ask(key, seq_id=9))).allowed  # after it: given back


def test_roles_merge_to_the_most_permissive_limit() -> None:
    two = Grant(permissions=["generate"], max_concurrent=2)
    five = Grant(permissions=["generate"], max_concurrent=5)
    viewer = Grant(permissions=["models:read"])
    assert merge([two, five, viewer]).max_concurrent == 5
    assert merge([two, Grant(permissions=["generate"])]).max_concurrent is None
    assert merge([two, viewer]).max_concurrent == 2


def test_memory_stays_bounded() -> None:
    running = Concurrency()
    for seq_id in range(20_000):
        running.abandon(seq_id)  # answers never heard, for decisions never made
    assert len(running._abandoned) <= 4096


@pytest.fixture
def opa() -> Iterator[OPAServer]:
    with OPAServer().running() as server:
        yield server


async def test_the_gate_gives_up_an_admission_it_never_heard(
    tmp_path: Path, opa: OPAServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call times out while OPA thinks; the policy then admits for nobody. Without the
    gate's abandoned Settle that place would be held until a restart."""
    monkeypatch.setattr(policy_client, "POLICY_CALL_TIMEOUT_S", 0.2)
    store, key = solo(tmp_path)
    opa.delay_s = 0.5
    client = OPAClient(opa.url, timeout_s=5, fail_open=False)
    registry = Registry()
    actor = PolicyActor(
        "policy", make_policy=lambda: policy(store, opa=client), in_registry=registry
    )
    gate = PolicyGate(ActorRef("policy", registry), None, Blocklist([]), needs_prompt_text=False)
    model = ServedModel(MODEL, None, None, 1024)  # type: ignore[arg-type]
    prepared = Prepared([1] * 10, 5, 100, SamplingParams(), n=1, priority=0)

    def context() -> RequestContext:
        return RequestContext("POST", "/v1/completions", f"Bearer {key}", "t", "")

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(APIError) as timed_out:
            await gate.admit(context(), model, prepared, 1)
        assert timed_out.value.code == "policy_timeout"
        await trio.sleep(0.6)  # OPA has answered by now: admitted, for nobody
        opa.delay_s = 0.0
        running = context()
        await gate.admit(running, model, prepared, 2)
        with pytest.raises(APIError) as over:
            await gate.admit(context(), model, prepared, 3)
        assert (over.value.status, over.value.code) == (429, "concurrency_limit_exceeded")
        gate.ended(running, 200, "")  # the generation ends: its ticket settles
        await trio.sleep(0.05)
        await gate.admit(context(), model, prepared, 4)
        nursery.cancel_scope.cancel()
    await client.aclose()
