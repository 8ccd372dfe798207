"""Policy decisions without HTTP: RBAC, ceilings, blocklist, token reservations, OPA, admin."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import ActorRef, Registry
from inferflux.config import ConfigError, PolicyConfig
from inferflux.config_load import load_config
from inferflux.ingress import policy_client, tickets
from inferflux.ingress.errors import APIError
from inferflux.ingress.policy_client import required_permission
from inferflux.policy import ops
from inferflux.policy.actor import PolicyActor
from inferflux.policy.audit import AuditLog
from inferflux.policy.engine import Policy
from inferflux.policy.guardrails import Blocklist, OPAClient
from inferflux.policy.limits import RateLimiter
from inferflux.policy.messages import Access, Admin, Authorize, Decision, Settle
from inferflux.policy.oidc import OIDCSettings, OIDCVerifier, TokenError
from inferflux.policy.records import Limit, StoreData
from inferflux.policy.setup import build_policy
from inferflux.policy.store import PolicyStore
from tests.policy_support import OPAServer

MODEL = "m"


def store_with(tmp_path: Path, **requests: ops.KeyRequest) -> tuple[PolicyStore, dict[str, str]]:
    store = PolicyStore.open(tmp_path / "p.store", b"pw", create=True)
    keys: dict[str, str] = {}

    def add(data: StoreData) -> StoreData:
        for name, request in requests.items():
            key, _, data = ops.create_key(data, request)
            keys[name] = key
        return data

    store.update(add)
    return store, keys


def policy(store: PolicyStore | None, **kw: object) -> Policy:
    fields: dict[str, object] = {
        "auth_required": True,
        "store": store,
        "limiter": RateLimiter(trio.current_time),
        "default_limit": Limit(),
        "blocklist": Blocklist([]),
        **kw,
    }
    return Policy(**fields)  # type: ignore[arg-type]


def ask(key: str, **kw: object) -> Authorize:
    fields: dict[str, object] = {"credential": f"Bearer {key}", "room": 100, **kw}
    seq_id, model = fields.pop("seq_id", 1), fields.pop("model", MODEL)
    return Authorize(seq_id, model, fields.pop("prompt_tokens", 10), **fields)  # type: ignore[arg-type]


async def test_rbac_ceilings_and_models(tmp_path: Path) -> None:
    store, keys = store_with(
        tmp_path,
        full=ops.KeyRequest(name="full", scopes=["generate", "models:read"]),
        narrow=ops.KeyRequest(
            name="narrow", scopes=["generate"], models=["m"], max_tokens=20, max_priority=1
        ),
        reader=ops.KeyRequest(name="reader", scopes=["models:read"]),
    )
    p = policy(store)
    assert (await p.authorize(ask(keys["full"], max_tokens=90))).allowed
    denied = await p.authorize(ask(keys["reader"]))
    assert (denied.status, denied.code) == (403, "permission_denied")
    assert "'generate'" in denied.reason
    assert (await p.authorize(ask(keys["narrow"], model="other"))).code == "model_not_allowed"
    over = await p.authorize(ask(keys["narrow"], max_tokens=21))
    assert (over.status, over.param) == (403, "max_tokens")
    assert (await p.authorize(ask(keys["narrow"], priority=2))).code == "priority_not_allowed"
    clamped = await p.authorize(ask(keys["narrow"]))  # no max_tokens: clamped to the ceiling
    assert clamped.allowed and clamped.max_tokens == 20 and clamped.reserved_tokens == 10 + 20
    missing = await p.access(Access(credential="", permission="models:read", path="/v1/models"))
    assert (missing.status, missing.code) == (401, "missing_api_key")
    wrong = await p.access(
        Access(credential="Bearer ifx_000000000000_" + "A" * 43, permission="generate", path="")
    )
    assert (wrong.status, wrong.code) == (401, "invalid_api_key")
    reader = await p.access(
        Access(credential=f"Bearer {keys['reader']}", permission="models:read", path="")
    )
    assert reader.allowed and reader.principal.startswith("key:")


async def test_auth_off_is_anonymous_but_admin_still_authenticates(tmp_path: Path) -> None:
    store, keys = store_with(tmp_path, a=ops.KeyRequest(name="a", scopes=["admin"]))
    p = policy(store, auth_required=False)
    anon = await p.authorize(ask("whatever"))
    assert anon.allowed and anon.principal == "anonymous"
    denied = await p.admin(Admin(credential="", op="keys.list"))
    assert denied.status == 401
    assert (await p.admin(Admin(credential=f"Bearer {keys['a']}", op="keys.list"))).allowed


async def test_blocklist_refuses_prompts() -> None:
    p = policy(None, auth_required=False, blocklist=Blocklist([r"secret\s+plan"]))
    blocked = await p.authorize(ask("", prompt="tell me the SECRET   plan"))
    assert (blocked.status, blocked.code) == (403, "content_blocked")
    assert "secret" not in blocked.reason.lower()  # neither the pattern nor the text echoed
    assert (await p.authorize(ask("", prompt="tell me the plan"))).allowed


async def test_tokens_per_minute_are_reserved_then_settled(tmp_path: Path) -> None:
    store, keys = store_with(
        tmp_path, k=ops.KeyRequest(name="k", scopes=["generate"], tokens_per_minute=100)
    )
    p = policy(store)
    first = await p.authorize(ask(keys["k"], max_tokens=50))  # 10 + 50 reserved
    assert first.allowed and first.reserved_tokens == 60
    second = await p.authorize(ask(keys["k"], max_tokens=50))
    assert second.status == 429 and second.retry_after_s is not None and second.retry_after_s >= 1
    p.settle(Settle(principal=first.principal, reserved_tokens=60, used_tokens=15))
    assert (await p.authorize(ask(keys["k"], max_tokens=50))).allowed


@pytest.fixture
def opa() -> Iterator[OPAServer]:
    with OPAServer().running() as server:
        yield server


async def test_opa_decides_with_real_rego(opa: OPAServer) -> None:
    client = OPAClient(opa.url, timeout_s=5, fail_open=False)
    p = policy(None, auth_required=False, opa=client)
    try:
        assert (await p.authorize(ask("", max_tokens=12, prompt="hello"))).allowed
        denied = await p.authorize(ask("", max_tokens=13, prompt="hello"))
        assert (denied.status, denied.code) == (403, "policy_denied")
        facts = opa.inputs[-1]
        assert facts["max_tokens"] == 13 and facts["principal"] == "anonymous"
        assert "prompt" not in facts and len(facts["prompt_sha256"]) == 64
    finally:
        await client.aclose()


@pytest.mark.parametrize("fail_open", [True, False])
async def test_opa_timeout_follows_fail_open_or_closed(opa: OPAServer, fail_open: bool) -> None:
    opa.delay_s = 1.0
    client = OPAClient(opa.url, timeout_s=0.2, fail_open=fail_open)
    p = policy(None, auth_required=False, opa=client)
    try:
        with trio.fail_after(0.9):  # the timeout holds: the decision does not wait for OPA
            decision = await p.authorize(ask("", max_tokens=5))
        assert decision.allowed is fail_open
        if not fail_open:
            assert (decision.status, decision.code) == (503, "policy_unavailable")
    finally:
        await client.aclose()


async def test_admin_operations_change_the_running_policy(tmp_path: Path) -> None:
    store, keys = store_with(tmp_path, root=ops.KeyRequest(name="root", scopes=["admin"]))
    p = policy(store)
    cred = f"Bearer {keys['root']}"
    made = await p.admin(
        Admin(credential=cred, op="keys.create", body={"name": "u", "scopes": ["generate"]})
    )
    assert made.status == 201 and made.result["key"].startswith("ifx_")
    user = made.result["key"]
    assert (await p.authorize(ask(user))).allowed
    bad = await p.admin(
        Admin(credential=cred, op="keys.create", body={"name": "x", "scopes": ["fly"]})
    )
    assert (bad.status, bad.code) == (400, "invalid_value")
    limited = await p.admin(
        Admin(
            credential=cred,
            op="limits.put",
            name=made.result["principal"],
            body={"requests_per_minute": 1},
        )
    )
    assert limited.allowed
    access = Access(credential=f"Bearer {user}", permission="generate", path="")
    assert (await p.access(access)).allowed
    assert (await p.access(access)).status == 429
    revoked = await p.admin(Admin(credential=cred, op="keys.revoke", name=made.result["id"]))
    assert revoked.allowed and revoked.result["revoked_at"]
    assert (await p.authorize(ask(user))).code == "revoked_api_key"
    assert (await p.admin(Admin(credential=cred, op="keys.revoke", name="nope"))).status == 404
    not_admin = await p.admin(Admin(credential=f"Bearer {user}", op="keys.list"))
    assert not_admin.status == 401  # revoked by now
    on_disk = PolicyStore.open(tmp_path / "p.store", b"pw").data
    assert made.result["id"] in on_disk.keys and on_disk.keys[made.result["id"]].revoked_at


def test_setup_checks_everything_at_startup(tmp_path: Path, monkeypatch, caplog) -> None:
    assert build_policy(PolicyConfig()) is None
    assert "AUTHENTICATION IS OFF" in caplog.text
    with pytest.raises(ConfigError, match="invalid"):
        build_policy(PolicyConfig(blocklist=["(unclosed"]))
    with pytest.raises(ConfigError, match="oidc_audience"):
        build_policy(PolicyConfig(oidc_issuer="https://i", oidc_jwks_url="https://j"))
    with pytest.raises(ConfigError, match="https"):
        build_policy(
            PolicyConfig(oidc_issuer="https://i", oidc_audience="a", oidc_jwks_url="http://j")
        )
    with pytest.raises(ConfigError, match="needs credentials"):
        build_policy(PolicyConfig(auth="required"))
    store_with(tmp_path)
    monkeypatch.delenv("INFERFLUX_POLICY_KEY", raising=False)
    with pytest.raises(ConfigError, match="INFERFLUX_POLICY_KEY"):
        build_policy(PolicyConfig(store_path=str(tmp_path / "p.store")))
    monkeypatch.setenv("INFERFLUX_POLICY_KEY", "not pw")
    with pytest.raises(ConfigError, match="wrong key"):
        build_policy(PolicyConfig(store_path=str(tmp_path / "p.store")))
    monkeypatch.setenv("INFERFLUX_POLICY_KEY", "pw")
    setup = build_policy(PolicyConfig(store_path=str(tmp_path / "p.store")))
    assert setup is not None and setup.auth_required
    # Read once, then gone from the environment every later child process would inherit.
    assert "INFERFLUX_POLICY_KEY" not in os.environ


@given(st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_authorization_header_is_a_decision_never_an_exception(header: str) -> None:
    """Whatever arrives in the header (keys, JWT-shaped junk, garbage), the answer is a
    Decision: 401 for all of these (the OIDC verifier's JWKS is unreachable on purpose)."""
    settings_ = OIDCSettings("https://i", "a", "https://127.0.0.1:9/jwks.json", timeout_s=0.5)

    async def decide() -> Decision:
        p = policy(None, oidc=OIDCVerifier(settings_, trio.current_time))
        return await p.access(Access(credential=header, permission="generate", path="/"))

    decision = trio.run(decide)
    assert not decision.allowed and decision.status == 401


@given(
    st.lists(
        st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-_", min_size=1, max_size=40),
        min_size=3,
        max_size=3,
    )
)
@settings(max_examples=200, deadline=None)
def test_jwt_shaped_junk_is_refused_cleanly(parts: list[str]) -> None:
    settings_ = OIDCSettings("https://i", "a", "https://127.0.0.1:9/jwks.json", timeout_s=0.5)

    async def verify() -> None:
        await OIDCVerifier(settings_, trio.current_time).verify(".".join(parts))

    with pytest.raises(TokenError):
        trio.run(verify)


def test_paths_map_to_permissions() -> None:
    assert required_permission("/v1/chat/completions") == "generate"
    assert required_permission("/v1/embeddings") == "generate"  # unknown /v1: protected
    assert required_permission("/tokenize") == "generate"
    assert required_permission("/v1/models") == "models:read"
    assert required_permission("/v1/admin/keys/abc") == "admin"
    for open_path in ("/livez", "/readyz", "/healthz", "/metrics", "/debug/actors", "/"):
        assert required_permission(open_path) is None


async def test_store_changes_on_disk_are_picked_up_and_a_broken_file_is_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, keys = store_with(tmp_path, a=ops.KeyRequest(name="a", scopes=["generate"]))
    p = policy(store)
    other = PolicyStore.open(tmp_path / "p.store", b"pw")  # another process, e.g. the CLI
    other.update(lambda d: ops.revoke_key(d, "a")[1])
    assert (await p.authorize(ask(keys["a"]))).allowed  # not yet seen
    await p.reload_if_changed()
    assert (await p.authorize(ask(keys["a"]))).code == "revoked_api_key"
    (tmp_path / "p.store").write_bytes(b"garbage")
    await p.reload_if_changed()
    await p.reload_if_changed()
    assert caplog.text.count("cannot be read") == 1
    assert (await p.authorize(ask(keys["a"]))).code == "revoked_api_key"  # last good data


def test_policy_config_from_environment() -> None:
    config = load_config(
        env={
            "INFERFLUX_POLICY_BLOCKLIST": '["a,b", "c\\\\d"]',
            "INFERFLUX_POLICY_AUTH": "required",
            "INFERFLUX_POLICY_TOKENS_PER_MINUTE": "900",
            "INFERFLUX_POLICY_OPA_FAIL_OPEN": "yes",
        }
    )
    assert config.policy.blocklist == ["a,b", "c\\d"]
    assert config.policy.auth == "required" and config.policy.tokens_per_minute == 900
    assert config.policy.opa_fail_open is True
    with pytest.raises(ConfigError, match="INFERFLUX_POLICY_BLOCKLIST"):
        load_config(env={"INFERFLUX_POLICY_BLOCKLIST": "not json"})
    with pytest.raises(ConfigError, match="auth"):
        load_config(env={"INFERFLUX_POLICY_AUTH": "maybe"})


async def test_a_request_over_the_whole_token_limit_is_a_400_not_a_retry(tmp_path: Path) -> None:
    store, keys = store_with(
        tmp_path, k=ops.KeyRequest(name="k", scopes=["generate"], tokens_per_minute=100)
    )
    p = policy(store)
    never = await p.authorize(ask(keys["k"], max_tokens=95))  # 10 + 95 > 100, ever
    assert (never.status, never.code, never.param) == (400, "tokens_exceed_limit", "max_tokens")
    assert never.retry_after_s is None
    # No max_tokens: clamped to what the limit can hold (100 - 10), not refused for the
    # context window (room 500) it never asked for.
    fitted = await p.authorize(ask(keys["k"], room=500))
    assert fitted.allowed and fitted.max_tokens == 90 and fitted.reserved_tokens == 100
    two = await p.authorize(ask(keys["k"], room=500, choices=2, prompt_tokens=0))
    assert two.status == 429  # the bucket is spent; n=2 would get 50 each once it refills


async def test_an_opa_outage_denial_names_the_principal(tmp_path: Path) -> None:
    store, keys = store_with(tmp_path, k=ops.KeyRequest(name="k", scopes=["generate"]))
    client = OPAClient("http://127.0.0.1:9/v1/data/x", timeout_s=0.5, fail_open=False)
    try:
        decision = await policy(store, opa=client).authorize(ask(keys["k"]))
    finally:
        await client.aclose()
    assert (decision.status, decision.code) == (503, "policy_unavailable")
    assert decision.principal.startswith("key:")


async def test_a_timed_out_policy_call_is_not_retried(
    opa: OPAServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The actor goes on deciding after the caller gave up: a retry would charge the
    # request's rate and tokens twice (the first charge never settled).
    monkeypatch.setattr(policy_client, "POLICY_CALL_TIMEOUT_S", 0.2)
    opa.delay_s = 0.5
    client = OPAClient(opa.url, timeout_s=5, fail_open=False)
    registry = Registry()
    actor = PolicyActor(
        "policy",
        make_policy=lambda: policy(None, auth_required=False, opa=client),
        in_registry=registry,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with pytest.raises(APIError) as timed_out:
            await policy_client.ask_policy(ActorRef("policy", registry), ask("", max_tokens=5))
        assert (timed_out.value.status, timed_out.value.code) == (503, "policy_timeout")
        await trio.sleep(1.5)  # anything retried would have reached OPA by now
        assert len(opa.inputs) == 1
        nursery.cancel_scope.cancel()
    await client.aclose()


async def test_an_evicted_ticket_is_audited_but_never_refunded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The oldest open ticket may belong to a generation still running: refunding its
    # reservation would let its principal overspend.
    monkeypatch.setattr(tickets, "MAX_OPEN_TICKETS", 1)
    store, keys = store_with(
        tmp_path, k=ops.KeyRequest(name="k", scopes=["generate"], tokens_per_minute=100)
    )
    registry = Registry()
    actor = PolicyActor("policy", make_policy=lambda: policy(store), in_registry=registry)
    ref = ActorRef("policy", registry)
    audit = AuditLog(str(tmp_path / "audit.jsonl"))
    held = tickets.TicketBook(ref, audit, needs_prompt_text=False)

    def ticket(seq_id: int, decision: Decision) -> tickets.Ticket:
        return tickets.Ticket(
            seq_id, decision.principal, f"t{seq_id}", "POST", "/v1/completions", MODEL, 10, "",
            decision.reserved_tokens, trio.current_time(),
        )  # fmt: skip

    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        first = await ref.call(ask(keys["k"], max_tokens=50))
        assert first.allowed and first.reserved_tokens == 60
        held.open_ticket(ticket(1, first))
        held.open_ticket(ticket(2, Decision(allowed=True)))  # evicts the first
        await trio.sleep(0.1)  # a Settle, if any, has landed
        assert (await ref.call(ask(keys["k"], max_tokens=50))).status == 429
        nursery.cancel_scope.cancel()
    audit.close()
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert '"status":499' in line and '"reason":"evicted"' in line


async def test_a_reloaded_store_with_absurd_scrypt_parameters_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # log2(N) = 56 made scrypt panic (a BaseException) inside the reload poll: the policy
    # actor, then the process, went down. Now the header is refused before scrypt.
    store, keys = store_with(tmp_path, a=ops.KeyRequest(name="a", scopes=["generate"]))
    p = policy(store)
    path = tmp_path / "p.store"
    blob = bytearray(path.read_bytes())
    blob[8] = 56
    path.write_bytes(bytes(blob))
    await p.reload_if_changed()
    assert "keeping the last good version" in caplog.text and "log2_n = 56" in caplog.text
    assert (await p.authorize(ask(keys["a"]))).allowed


async def test_priority_is_a_privilege_granted_explicitly(tmp_path: Path) -> None:
    """A grant without max_priority has the ceiling 0 (it meant "unlimited" before), and so
    has `anonymous`; a grant that sets one keeps it."""
    store, keys = store_with(
        tmp_path,
        plain=ops.KeyRequest(name="plain", scopes=["generate"]),
        boss=ops.KeyRequest(name="boss", scopes=["generate"], max_priority=5),
    )
    p = policy(store)
    assert (await p.authorize(ask(keys["plain"], priority=0))).allowed
    assert (await p.authorize(ask(keys["plain"], priority=-3))).allowed  # below: fine
    over = await p.authorize(ask(keys["plain"], priority=1))
    assert (over.status, over.code, over.param) == (403, "priority_not_allowed", "priority")
    assert "above the ceiling of 0" in over.reason
    assert (await p.authorize(ask(keys["boss"], priority=5))).allowed
    assert (await p.authorize(ask(keys["boss"], priority=6))).status == 403
    anonymous = policy(None, auth_required=False)
    refused = await anonymous.authorize(ask("", priority=1))
    assert (refused.status, refused.principal) == (403, "anonymous")
    raised = policy(None, auth_required=False, anonymous_max_priority=4)
    assert (await raised.authorize(ask("", priority=4))).allowed


async def test_with_no_policy_configured_only_priority_is_refused() -> None:
    registry = Registry()
    actor = PolicyActor("policy", in_registry=registry)  # no policy: the allow-all actor
    ref = ActorRef("policy", registry)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert (await ref.call(Authorize(1, MODEL, 10, priority=0))).allowed
        refused = await ref.call(Authorize(2, MODEL, 10, priority=1))
        assert (refused.status, refused.code) == (403, "priority_not_allowed")
        assert "ceiling of 0 for anonymous" in refused.reason
        nursery.cancel_scope.cancel()
