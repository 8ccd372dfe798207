"""Health endpoints, W3C traceparent round trip (and the trace id in the JSON logs), and
the actor runtime's metrics moving after real traffic."""

import json
import re
import time

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer, serving, start_server, stop_server

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def obs_server(model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from serving(tmp_path_factory, "obs", 2, "--log-format", "json")


def test_health_endpoints(obs_server: RunningServer) -> None:
    assert httpx.get(f"{obs_server.url}/livez").json() == {"status": "alive"}
    assert httpx.get(f"{obs_server.url}/readyz").status_code == 200
    health = httpx.get(f"{obs_server.url}/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ready",
        "live": True,
        "ready": True,
        "reasons": [],
        "model": MODEL_ID,
    }


def test_traceparent_round_trip_and_json_logs(obs_server: RunningServer) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    reply = httpx.post(
        f"{obs_server.url}/v1/chat/completions",
        json=body,
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        timeout=60,
    )
    assert reply.status_code == 200
    returned = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", reply.headers["traceparent"])
    assert returned and returned.group(1) == trace and returned.group(2) != "00f067aa0ba902b7"
    # Errors carry it too; a malformed header gets a fresh trace id.
    for bad in ["garbage", f"00-{'0' * 32}-00f067aa0ba902b7-01"]:
        error = httpx.post(
            f"{obs_server.url}/v1/chat/completions",
            content=b"{",
            headers={"traceparent": bad, "content-type": "application/json"},
        )
        assert error.status_code == 400
        fresh = error.headers["traceparent"].split("-")[1]
        assert len(fresh) == 32 and fresh not in (trace, "0" * 32)
    lines = [json.loads(line) for line in obs_server.log().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    assert any(trace in e["message"] for e in lines)


def test_runtime_metrics_move_with_traffic(obs_server: RunningServer) -> None:
    before = obs_server.metrics()
    client = openai.OpenAI(base_url=f"{obs_server.url}/v1", api_key="x", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hello"}], max_tokens=4
        )
    after = obs_server.metrics()

    def value(samples: dict[str, float], name: str, actor: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(name) and f'actor="{actor}"' in k)

    for actor in ("scheduler", "policy", "worker-0"):
        assert value(after, "inferflux:actor_messages_received_total", actor) > value(
            before, "inferflux:actor_messages_received_total", actor
        ), actor
        assert any(
            k.startswith("inferflux:actor_mailbox_depth{") and f'actor="{actor}"' in k
            for k in after
        ), actor
    assert value(after, "inferflux:actor_restarts_total", "worker-0") == 0
    assert obs_server.metric("inferflux:generation_tokens_total") >= 12


def test_opentelemetry_span_per_request(model_path: str, tmp_path) -> None:
    """With server.otel_traces = "console" each request is exported as a span in the
    caller's trace, child of the caller's span, with token counts."""
    config = tmp_path / "otel.toml"
    config.write_text('[server]\notel_traces = "console"\n')
    server = start_server(
        str(tmp_path), "--n-parallel", "1", "--ctx-size", "512", "--config", str(config)
    )
    try:
        trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            extra_body={"ignore_eos": True},
            extra_headers={"traceparent": f"00-{trace}-{parent}-01"},
        )
        our_span = raw.headers["traceparent"].split("-")[2]
        deadline = time.monotonic() + 10
        while f"0x{our_span}" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        spans, lines = [], server.log().splitlines()
        for i, line in enumerate(lines):  # the console exporter prints indented JSON
            if line == "{":
                end = lines.index("}", i)
                spans.append(json.loads("\n".join(lines[i : end + 1])))
        span = next(sp for sp in spans if sp["context"]["span_id"] == f"0x{our_span}")
        assert span["context"]["trace_id"] == f"0x{trace}"
        assert span["parent_id"] == f"0x{parent}"
        assert span["attributes"]["gen_ai.usage.output_tokens"] == 5
        assert span["attributes"]["inferflux.finish_reason"] == "length"
    finally:
        stop_server(server)
