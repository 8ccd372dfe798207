"""Sustained overload: a server with 1 slot and room for 2 waiting requests, hit by waves
of 40 concurrent clients. Beyond the queue it answers 429 with Retry-After at once (OpenAI
error shape), everything it accepted completes, and the server's memory stays flat from
wave to wave."""

import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def small_server(model_path: str, tmp_path_factory: pytest.TempPathFactory):
    config = tmp_path_factory.mktemp("overload") / "overload.toml"
    config.write_text("[scheduler]\nmax_waiting = 2\n")
    yield from serving(tmp_path_factory, "overload", 1, "--config", str(config))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def wave(client: openai.AsyncOpenAI, n: int) -> tuple[int, int]:
    done = refused = 0

    async def one() -> None:
        nonlocal done, refused
        try:
            reply = await client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
            done += 1
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
            assert int(exc.response.headers["retry-after"]) >= 1
            assert exc.body["code"] == "overloaded"
            refused += 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return done, refused


async def test_overload_answers_429_and_memory_stays_flat(small_server: RunningServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{small_server.url}/v1", api_key="x", max_retries=0)
    done, refused = await wave(client, 40)  # warm-up wave
    assert refused > 0 and done >= 3 and done + refused == 40
    baseline = rss_kib(small_server.process.pid)
    for _ in range(6):
        done, refused = await wave(client, 40)
        assert refused > 0 and done + refused == 40
    growth_kib = rss_kib(small_server.process.pid) - baseline
    print(f"overload: server RSS {baseline} KiB after warm-up, growth {growth_kib} KiB")
    assert growth_kib < 16 * 1024, f"server RSS grew {growth_kib} KiB over 6 overload waves"
    assert small_server.metric("inferflux:num_requests_waiting") == 0
