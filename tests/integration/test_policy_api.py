"""The policy over real HTTP: a real server on the real model, with an encrypted store,
OIDC tokens from a local HTTPS JWKS server, a Rego policy behind OPA's data API, a
blocklist, rate limits and the audit log. Clients: the official `openai` client, httpx for
the admin API, the `inferflux keys` CLI as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from inferflux.policy import ops
from inferflux.policy.records import StoreData
from inferflux.policy.store import PolicyStore
from tests.conftest import MODEL_ID, REPO, RunningServer, serving
from tests.policy_support import (
    AUDIENCE,
    ISSUER,
    JWKSServer,
    OPAServer,
    ec_key,
    make_tls,
    rsa_key,
    token,
    wait_for,
)

pytestmark = pytest.mark.model

SECRET = "integration passphrase"
RSA = rsa_key("rsa-a")
EC = ec_key("ec-a")
MARKER = "zebra-umbrella-7731"  # a prompt word that must never reach the audit log


@dataclass
class Setup:
    server: RunningServer
    store: str
    key_file: str
    audit: Path
    keys: dict[str, str]
    jwks: JWKSServer
    opa: OPAServer


def make_store(path: Path) -> dict[str, str]:
    store = PolicyStore.open(path, SECRET.encode(), create=True)
    requests = {
        "admin": ops.KeyRequest(name="admin", scopes=["generate", "models:read", "admin"]),
        "user": ops.KeyRequest(name="user", scopes=["generate"]),
        "reader": ops.KeyRequest(name="reader", scopes=["models:read"]),
        "limited": ops.KeyRequest(name="limited", scopes=["generate"], requests_per_minute=2),
        "revoked": ops.KeyRequest(name="revoked", scopes=["generate", "models:read"]),
    }
    keys: dict[str, str] = {}

    def fill(data: StoreData) -> StoreData:
        for name, request in requests.items():
            key, _, data = ops.create_key(data, request)
            keys[name] = key
        data = ops.put_role(
            data,
            "analyst",
            ops.RoleRequest(permissions=["generate", "models:read"], max_tokens=16, max_priority=0),
        )
        return ops.put_role(
            data, "elsewhere", ops.RoleRequest(permissions=["generate"], models=["another-model"])
        )

    store.update(fill)
    return keys


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("policy")
    tls = make_tls(directory)
    key_file = directory / "store.key"
    key_file.write_text(SECRET + "\n")
    keys = make_store(directory / "policy.store")
    audit = directory / "audit.jsonl"
    with JWKSServer(tls, keys=[RSA, EC]).running() as jwks, OPAServer().running() as opa:
        config = directory / "inferflux.toml"
        config.write_text(
            "[policy]\n"
            "store_poll_s = 0.2\n"
            f'blocklist = ["secret\\\\s+plan", "\\\\bseven\\\\b"]\n'
            f'oidc_issuer = "{ISSUER}"\n'
            f'oidc_audience = "{AUDIENCE}"\n'
            f'oidc_jwks_url = "{jwks.url}"\n'
            f'oidc_ca_file = "{tls.ca}"\n'
            "oidc_jwks_refresh_min_s = 0.0\n"
            "oidc_leeway_s = 5.0\n"
            f'opa_url = "{opa.url}"\n'
            "opa_timeout_s = 5.0\n"
        )
        servers = serving(
            tmp_path_factory,
            "policy-server",
            4,
            "--config",
            str(config),
            "--policy-store",
            str(directory / "policy.store"),
            "--policy-key-file",
            str(key_file),
            "--audit-log",
            str(audit),
        )
        server = next(servers)
        try:
            yield Setup(
                server, str(directory / "policy.store"), str(key_file), audit, keys, jwks, opa
            )
        finally:
            servers.close()


def client(setup: Setup, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{setup.server.url}/v1", api_key=key, max_retries=0)


def chat(setup: Setup, key: str, content: str = "Say hi.", **kwargs):
    return client(setup, key).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": content}],
        **{"max_tokens": 4, "temperature": 0, **kwargs},
    )


def test_missing_wrong_and_revoked_keys_get_401(setup: Setup) -> None:
    url = setup.server.url
    bare = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL_ID, "messages": []})
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"].startswith("Bearer")
    assert bare.json()["error"]["code"] == "missing_api_key"
    assert bare.json()["error"]["type"] == "authentication_error"
    stream = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    for path, body in (
        ("/tokenize", {"prompt": "hi"}),
        ("/detokenize", {"tokens": [1, 2]}),
        ("/v1/completions", {"model": MODEL_ID, "prompt": "hi"}),
        ("/v1/chat/completions", stream),
    ):
        refused = httpx.post(f"{url}{path}", json=body)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "missing_api_key", path
    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(setup, "ifx_0123456789ab_" + "x" * 43)
    assert wrong.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        chat(setup, setup.keys["user"][:-2] + "zz")
    malformed = httpx.get(f"{url}/v1/models", headers={"authorization": "Basic dTpw"})
    assert malformed.status_code == 401 and "Bearer" in malformed.json()["error"]["message"]
    assert chat(setup, setup.keys["revoked"]).choices[0].message.content is not None
    admin = {"authorization": f"Bearer {setup.keys['admin']}"}
    key_id = setup.keys["revoked"].split("_")[1]
    assert httpx.delete(f"{url}/v1/admin/keys/{key_id}", headers=admin).status_code == 200
    with pytest.raises(openai.AuthenticationError) as revoked:
        chat(setup, setup.keys["revoked"])
    assert revoked.value.body["code"] == "revoked_api_key"


def test_valid_keys_without_the_permission_get_403_naming_it(setup: Setup) -> None:
    with pytest.raises(openai.PermissionDeniedError) as models:
        client(setup, setup.keys["user"]).models.list()
    assert "'models:read'" in models.value.body["message"]
    with pytest.raises(openai.PermissionDeniedError) as generate:
        chat(setup, setup.keys["reader"])
    assert "'generate'" in generate.value.body["message"]
    assert [m.id for m in client(setup, setup.keys["reader"]).models.list()] == [MODEL_ID]


def test_valid_key_generates_streamed_and_not(setup: Setup) -> None:
    whole = chat(setup, setup.keys["user"], "Name a color.", max_tokens=8)
    assert whole.usage.completion_tokens > 0
    stream = client(setup, setup.keys["user"]).chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Name a color."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == whole.choices[0].message.content


def test_open_endpoints_need_no_credentials(setup: Setup) -> None:
    for path in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert httpx.get(f"{setup.server.url}{path}").status_code == 200, path


def test_oidc_tokens_from_the_jwks_server(setup: Setup) -> None:
    analyst = token(RSA, sub="ana", roles=["analyst"])
    assert chat(setup, analyst).usage.completion_tokens > 0
    assert [m.id for m in client(setup, analyst).models.list()] == [MODEL_ID]
    assert chat(setup, token(EC, sub="eve", roles=["analyst"])).choices
    bad = {
        "expired": token(RSA, roles=["analyst"], expires_in=-120),
        "wrong audience": token(RSA, roles=["analyst"], aud="another-service"),
        "wrong signature": token(rsa_key("rsa-a"), roles=["analyst"]),
        "unknown kid": token(rsa_key("rsa-unknown"), roles=["analyst"]),
    }
    fetches = setup.jwks.fetches
    for case, bad_token in bad.items():
        with pytest.raises(openai.AuthenticationError) as refused:
            chat(setup, bad_token)
        assert refused.value.body["code"] == "invalid_token", case
    assert setup.jwks.fetches > fetches  # the unknown kid made the server look again
    rotated = rsa_key("rsa-b")
    setup.jwks.keys.append(rotated)  # key rotation at the IdP: accepted without a restart
    assert chat(setup, token(rotated, sub="ana", roles=["analyst"])).choices


def test_role_ceilings_apply_to_oidc_principals(setup: Setup) -> None:
    analyst = token(RSA, sub="ana", roles=["analyst"])
    with pytest.raises(openai.PermissionDeniedError) as tokens:
        chat(setup, analyst, max_tokens=17)
    assert tokens.value.body["param"] == "max_tokens"
    with pytest.raises(openai.PermissionDeniedError) as priority:
        chat(setup, analyst, extra_body={"priority": 3})
    assert priority.value.body["code"] == "priority_not_allowed"
    # No max_tokens: clamped to the role's ceiling of 16.
    unbounded = client(setup, analyst).completions.create(
        model=MODEL_ID,
        prompt="The capital of France is",
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert unbounded.usage.completion_tokens == 16
    assert unbounded.choices[0].finish_reason == "length"
    with pytest.raises(openai.PermissionDeniedError) as model:
        chat(setup, token(RSA, sub="x", roles=["elsewhere"]))
    assert model.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):
        chat(setup, token(RSA, sub="nobody", roles=["no-such-role"]))


def test_over_the_request_rate_answers_429_with_retry_after(setup: Setup) -> None:
    key = setup.keys["limited"]  # 2 requests per minute; every protected request counts
    for _ in range(2):  # cheap requests, so no refill (one per 30 s) can happen meanwhile
        tokenized = httpx.post(
            f"{setup.server.url}/tokenize",
            headers={"authorization": f"Bearer {key}"},
            json={"prompt": "hi"},
        )
        assert tokenized.status_code == 200
    response = httpx.post(
        f"{setup.server.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert response.status_code == 429
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert response.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        chat(setup, key)


def test_over_the_token_rate_answers_429(setup: Setup) -> None:
    url, admin = setup.server.url, {"authorization": f"Bearer {setup.keys['admin']}"}
    made = httpx.post(
        f"{url}/v1/admin/keys",
        headers=admin,
        json={"name": "tokens", "scopes": ["generate"], "tokens_per_minute": 120},
    ).json()
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 60,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {made['key']}"}
    # While the first request holds its reservation (prompt + 60 of 120), a second one that
    # fits a minute but not what is left of it is refused.
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", headers=headers, json=body, timeout=60
    ) as first:
        assert first.status_code == 200
        next(first.iter_lines())
        with pytest.raises(openai.RateLimitError) as refused:
            chat(setup, made["key"], max_tokens=80)
    assert refused.value.response.headers["retry-after"].isdigit()
    assert "tokens per minute" in refused.value.body["message"]
    # More than the whole limit: no retry can pass, so not a 429 (SDKs retry those).
    with pytest.raises(openai.BadRequestError) as never:
        chat(setup, made["key"], max_tokens=500)
    assert never.value.body["code"] == "tokens_exceed_limit"
    assert never.value.body["param"] == "max_tokens"
    assert "lower max_tokens" in never.value.body["message"]
    assert "retry-after" not in never.value.response.headers


def test_a_limit_holds_across_concurrent_connections(setup: Setup) -> None:
    url, admin = setup.server.url, {"authorization": f"Bearer {setup.keys['admin']}"}
    made = httpx.post(
        f"{url}/v1/admin/keys",
        headers=admin,
        json={"name": "burst", "scopes": ["models:read"], "requests_per_minute": 3},
    ).json()
    headers = {"authorization": f"Bearer {made['key']}"}

    def one(_: int) -> int:
        with httpx.Client() as fresh:  # a connection of its own
            return fresh.get(f"{url}/v1/models", headers=headers).status_code

    with ThreadPoolExecutor(12) as pool:
        statuses = sorted(pool.map(one, range(12)))
    assert statuses == [200] * 3 + [429] * 9


def test_admin_api_changes_apply_without_restart(setup: Setup) -> None:
    url, admin = setup.server.url, {"authorization": f"Bearer {setup.keys['admin']}"}
    made = httpx.post(
        f"{url}/v1/admin/keys", headers=admin, json={"name": "fresh", "scopes": ["generate"]}
    )
    assert made.status_code == 201
    fresh = made.json()
    assert chat(setup, fresh["key"]).choices
    listed = httpx.get(f"{url}/v1/admin/keys", headers=admin).json()["data"]
    row = next(k for k in listed if k["id"] == fresh["id"])
    assert "key" not in row and "sha256" not in row and fresh["key"] not in json.dumps(listed)
    limited = httpx.put(
        f"{url}/v1/admin/limits/{fresh['principal']}",
        headers=admin,
        json={"requests_per_minute": 1},
    )
    assert limited.status_code == 200
    # Only what was set: the token rate is still inherited (`*`, the server default).
    assert httpx.get(f"{url}/v1/admin/limits", headers=admin).json()[fresh["principal"]] == {
        "requests_per_minute": 1,
    }
    chat(setup, fresh["key"])
    with pytest.raises(openai.RateLimitError):
        chat(setup, fresh["key"])
    role = httpx.put(
        f"{url}/v1/admin/roles/tester", headers=admin, json={"permissions": ["models:read"]}
    )
    assert role.status_code == 200
    assert [m.id for m in client(setup, token(RSA, roles=["tester"])).models.list()] == [MODEL_ID]
    assert httpx.delete(f"{url}/v1/admin/roles/tester", headers=admin).status_code == 200
    with pytest.raises(openai.PermissionDeniedError):
        client(setup, token(RSA, roles=["tester"])).models.list()
    bad = httpx.post(f"{url}/v1/admin/keys", headers=admin, json={"name": "x", "scopes": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] is None
    as_json = {**admin, "content-type": "application/json"}
    assert httpx.post(f"{url}/v1/admin/keys", headers=as_json, content=b"{").status_code == 400
    not_utf8 = httpx.post(
        f"{url}/v1/admin/keys", headers=as_json, content=b'{"name": "\xff\xfe", "scopes": []}'
    )
    assert not_utf8.status_code == 400
    assert not_utf8.json()["error"]["code"] == "invalid_json"
    not_utf8_put = httpx.put(f"{url}/v1/admin/roles/r", headers=as_json, content=b"\xc3\x28")
    assert not_utf8_put.status_code == 400
    assert httpx.delete(f"{url}/v1/admin/keys/nope", headers=admin).status_code == 404
    user = {"authorization": f"Bearer {setup.keys['user']}"}
    denied = httpx.get(f"{url}/v1/admin/keys", headers=user)
    assert denied.status_code == 403 and "'admin'" in denied.json()["error"]["message"]
    assert httpx.get(f"{url}/v1/admin/keys").status_code == 401


def test_keys_cli_creates_a_key_the_running_server_accepts(setup: Setup) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "inferflux",
                *args,
                "--store",
                setup.store,
                "--key-file",
                setup.key_file,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("keys", "create", "--name", "from-cli", "--scopes", "generate,models:read")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("ifx_") and created.stdout.count(key) == 1
    assert wait_for(lambda: models_status(setup, key) == 200)
    listed = cli("keys", "list", "--json")
    assert any(k["name"] == "from-cli" for k in json.loads(listed.stdout))
    assert key not in listed.stdout
    assert cli("keys", "revoke", key.split("_")[1]).returncode == 0
    assert wait_for(lambda: models_status(setup, key) == 401)


def models_status(setup: Setup, key: str) -> int:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{setup.server.url}/v1/models", headers=headers).status_code


def test_guardrails_block_prompts_cut_outputs_and_ask_opa(setup: Setup) -> None:
    with pytest.raises(openai.PermissionDeniedError) as blocked:
        chat(setup, setup.keys["user"], "What is the SECRET  plan?")
    assert blocked.value.body["code"] == "content_blocked"
    c = client(setup, setup.keys["user"])
    prompt = "One, two, three, four,"  # greedy: " five, six, seven, eight..."
    whole = c.completions.create(model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.choices[0].finish_reason == "content_filter"
    assert "six" in whole.choices[0].text and "seven" not in whole.choices[0].text
    chunks = list(
        c.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
    )
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "content_filter"
    # The Rego policy denies max_tokens 13; OPA saw the principal.
    with pytest.raises(openai.PermissionDeniedError) as opa:
        chat(setup, setup.keys["user"], max_tokens=13)
    assert opa.value.body["code"] == "policy_denied"
    assert setup.opa.inputs[-1]["max_tokens"] == 13
    assert setup.opa.inputs[-1]["principal"].startswith("key:")
    with pytest.raises(openai.PermissionDeniedError):
        chat(setup, token(RSA, sub="mallory", roles=["analyst"]))


def test_audit_log_has_one_line_per_request_and_no_plaintext(setup: Setup) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    reply = client(setup, setup.keys["user"]).with_options(default_headers=headers)
    answer = reply.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": f"Repeat after me: {MARKER}"}],
        max_tokens=10,
        temperature=0,
    )
    denied_trace = "5bf92f3577b34da6a3ce929d0e0e4736"
    httpx.post(
        f"{setup.server.url}/v1/chat/completions",
        headers={"traceparent": f"00-{denied_trace}-00f067aa0ba902b7-01"},
        json={"model": MODEL_ID, "messages": [{"role": "user", "content": MARKER}]},
    )
    assert wait_for(lambda: denied_trace in setup.audit.read_text())
    text = setup.audit.read_text()
    assert MARKER not in text
    assert (answer.choices[0].message.content or "x") not in text
    lines = [json.loads(line) for line in text.splitlines()]
    (served,) = [line for line in lines if line["trace_id"] == trace]
    assert served["principal"] == "key:" + setup.keys["user"].split("_")[1]
    assert served["model"] == MODEL_ID and served["decision"] == "allow"
    assert served["status"] == 200 and served["path"] == "/v1/chat/completions"
    assert served["prompt_tokens"] == answer.usage.prompt_tokens
    assert served["completion_tokens"] == answer.usage.completion_tokens
    assert served["latency_ms"] > 0
    assert len(served["prompt_sha256"]) == 64 and len(served["completion_sha256"]) == 64
    (denied,) = [line for line in lines if line["trace_id"] == denied_trace]
    assert denied["decision"] == "deny" and denied["status"] == 401
    assert denied["reason"] == "missing_api_key"
    assert all(line["decision"] in ("allow", "deny") for line in lines)
    assert len({line["trace_id"] for line in lines}) == len(lines)  # one line per request


def test_a_stream_the_client_leaves_still_gets_its_audit_line(setup: Setup) -> None:
    trace = "6bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "authorization": f"Bearer {setup.keys['user']}",
        "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
    }
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", f"{setup.server.url}/v1/chat/completions", headers=headers, json=body
    ) as response:
        assert response.status_code == 200
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass  # a few chunks, then hang up
    assert wait_for(lambda: trace in setup.audit.read_text())
    (line,) = [json.loads(x) for x in setup.audit.read_text().splitlines() if trace in x]
    assert line["decision"] == "allow" and 0 < line["completion_tokens"] < 400
    assert line["finish_reason"] == "aborted"
    assert (line["status"], line["reason"]) == (499, "client_gone")  # not a 200


def test_logprobs_are_refused_while_an_output_blocklist_is_configured(setup: Setup) -> None:
    # The top alternatives of each token would show what the blocklist cuts from the text.
    c = client(setup, setup.keys["user"])
    with pytest.raises(openai.BadRequestError) as chat_logprobs:
        chat(setup, setup.keys["user"], logprobs=True, top_logprobs=5)
    assert chat_logprobs.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as text_logprobs:
        c.completions.create(model=MODEL_ID, prompt="One, two,", max_tokens=4, logprobs=5)
    assert text_logprobs.value.body["param"] == "logprobs"
    assert c.completions.create(model=MODEL_ID, prompt="One, two,", max_tokens=4).choices


def test_n_choices_reserve_max_tokens_each_and_settle_to_what_was_used(setup: Setup) -> None:
    url, admin = setup.server.url, {"authorization": f"Bearer {setup.keys['admin']}"}
    prompt = "One, two, three, four,"  # greedy: " five, six, ..."; stopped at " six"
    body = {"model": MODEL_ID, "prompt": prompt, "temperature": 0, "stop": [" six"]}
    measured = httpx.post(f"{url}/v1/completions", headers=admin, json=body | {"max_tokens": 1})
    p = measured.json()["usage"]["prompt_tokens"]
    made = httpx.post(
        f"{url}/v1/admin/keys",
        headers=admin,
        json={"name": "choices", "scopes": ["generate"], "tokens_per_minute": p + 250},
    ).json()
    headers = {"authorization": f"Bearer {made['key']}"}
    # n=2 reserves prompt + 2 x max_tokens: 2 x 126 is over the limit, 1 x 126 is not.
    over = httpx.post(
        f"{url}/v1/completions", headers=headers, json=body | {"max_tokens": 126, "n": 2}
    )
    assert over.status_code == 400 and over.json()["error"]["code"] == "tokens_exceed_limit"
    assert str(p + 252) in over.json()["error"]["message"]
    # Reserve prompt + 200 of prompt + 250, use a few: what was not used comes back, so the
    # same request passes again at once (without it, 50 tokens and ~4/s of refill).
    for _ in range(2):
        both = httpx.post(
            f"{url}/v1/completions",
            headers=headers,
            json=body | {"max_tokens": 100, "n": 2},
            timeout=120,
        )
        assert both.status_code == 200, both.text
        assert len(both.json()["choices"]) == 2
        assert both.json()["usage"]["completion_tokens"] < 40


def test_server_refuses_to_start_without_the_right_key(setup: Setup, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text("not the passphrase")
    for args in (["--policy-key-file", str(wrong)], []):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "inferflux",
                "run",
                "--port",
                "0",
                "--policy-store",
                setup.store,
                *args,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in __import__("os").environ.items() if k != "INFERFLUX_POLICY_KEY"},
        )
        assert result.returncode == 2, result.stderr
        assert ("wrong key" if args else "INFERFLUX_POLICY_KEY") in result.stderr


def test_agent_apis_sit_behind_the_same_gate(setup: Setup) -> None:
    """Anthropic's SDK authenticates with x-api-key; a denial comes in its error shape; a
    stored response is seen only by the principal that made it."""
    url, keys = setup.server.url, setup.keys
    claude = anthropic.Anthropic(base_url=url, api_key=keys["user"], max_retries=0)
    message = claude.messages.create(
        model=MODEL_ID, max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.usage.output_tokens > 0
    stranger = anthropic.Anthropic(base_url=url, api_key="ifx_nope_nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as denied:
        stranger.messages.create(
            model=MODEL_ID, max_tokens=3, messages=[{"role": "user", "content": "Hi"}]
        )
    assert denied.value.body["error"]["type"] == "authentication_error"
    made = client(setup, keys["user"]).responses.create(
        model=MODEL_ID, input="Hi", max_output_tokens=3
    )
    assert client(setup, keys["user"]).responses.retrieve(made.id).id == made.id
    with pytest.raises(openai.NotFoundError):
        client(setup, keys["admin"]).responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client(setup, keys["admin"]).responses.create(
            model=MODEL_ID, input="Hi", max_output_tokens=3, previous_response_id=made.id
        )
    lines = [json.loads(line) for line in setup.audit.read_text().splitlines()]
    assert any(line["path"] == "/v1/messages" and line["status"] == 200 for line in lines)
    assert any(line["path"] == "/v1/responses" and line["status"] == 200 for line in lines)
