"""Failed authentications limited per client address: 401s, then a 429 written once and
the rest counted; valid credentials never throttled; bounded memory."""

from __future__ import annotations

from pathlib import Path

import trio

from inferflux.policy import ops
from inferflux.policy.failures import AuthFailures, address_key
from inferflux.policy.messages import Access, Admin
from tests.unit.test_policy_engine import ask, policy, store_with
from tests.unit.test_policy_keys_limits import FakeClock


def test_past_the_limit_a_failure_is_throttled_and_written_once_per_lockout() -> None:
    clock = FakeClock()
    failures = AuthFailures(3, clock)
    assert [failures.failed("10.0.0.1").throttled for _ in range(3)] == [False] * 3
    first = failures.failed("10.0.0.1")
    assert first.throttled and first.audit and first.retry_after_s == 20  # 3/min: one per 20 s
    quiet = [failures.failed("10.0.0.1") for _ in range(50)]
    assert all(v.throttled and not v.audit for v in quiet)
    assert not failures.failed("10.0.0.2").throttled  # another address: its own bucket
    clock.now += 20  # one failure's worth refilled
    after = failures.failed("10.0.0.1")
    assert not after.throttled and after.audit and after.suppressed == 50
    assert failures.failed("10.0.0.1").throttled  # and empty again


def test_ipv6_counts_by_64_and_memory_stays_bounded() -> None:
    assert address_key("2001:db8:1:2::7") == address_key("2001:db8:1:2:ffff::1")
    assert address_key("2001:db8:1:3::7") != address_key("2001:db8:1:2::7")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    clock = FakeClock()
    failures = AuthFailures(1, clock, max_addresses=100)
    failures.failed("2001:db8:1:2::1")
    assert failures.failed("2001:db8:1:2::2").throttled  # same /64, same bucket
    for i in range(10_000):
        failures.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(failures) == 100  # the least recently failing forgotten first


async def test_bad_credentials_are_throttled_per_address_valid_ones_never(
    tmp_path: Path,
) -> None:
    store, keys = store_with(
        tmp_path,
        user=ops.KeyRequest(name="user", scopes=["generate"]),
        root=ops.KeyRequest(name="root", scopes=["admin"]),
    )
    p = policy(store, failures=AuthFailures(2, trio.current_time))
    bad = "Bearer ifx_000000000000_" + "A" * 43

    def access(credential: str, client: str = "192.0.2.7") -> Access:
        return Access(credential=credential, permission="generate", path="/", client=client)

    assert [(await p.access(access(bad))).status for _ in range(2)] == [401, 401]
    throttled = await p.access(access(bad))
    assert (throttled.status, throttled.code) == (429, "too_many_auth_failures")
    assert throttled.retry_after_s == 30 and throttled.audit
    assert not (await p.access(access(""))).audit  # a missing key is a failure too
    assert (await p.authorize(ask("nope", client="192.0.2.7"))).status == 429
    assert (await p.admin(Admin(credential=bad, op="keys.list", client="192.0.2.7"))).status == 429
    # The same address with valid credentials: served.
    assert (await p.access(access(f"Bearer {keys['user']}"))).allowed
    assert (await p.authorize(ask(keys["user"], client="192.0.2.7"))).allowed
    assert (await p.admin(Admin(credential=f"Bearer {keys['root']}", op="keys.list"))).allowed
    assert (await p.access(access(bad, client="192.0.2.8"))).status == 401
