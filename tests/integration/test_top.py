"""inferflux-top's live UI driven headless with textual's Pilot against a real server
under load: the tree, the scheduler and KV panels fill in, the keys sort, filter and
pause, and a screenshot can be saved (the README's SVG comes from here)."""

import asyncio
import threading

import openai
import pytest

from inferflux.top_app import TopApp
from tests.conftest import MODEL_ID, RunningServer, serving

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def top_server(model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from serving(tmp_path_factory, "top", 4)


def load(url: str, stop: threading.Event) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    while not stop.is_set():
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Tell me a story."}],
            max_tokens=24,
        )


def cell_texts(app: TopApp) -> list[list[str]]:
    table = app.query_one("DataTable")
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def drive(url: str, screenshot: str) -> dict:
    app = TopApp(url, interval=0.3)
    seen: dict = {}
    async with app.run_test(size=(140, 36)) as pilot:
        for _ in range(40):  # until a poll saw tokens flowing
            await pilot.pause(0.2)
            if app.rates.tok_s_history and max(app.rates.tok_s_history) > 0:
                break
        seen["names"] = [row[0].strip() for row in cell_texts(app)]
        seen["scheduler"] = str(app.query_one("#scheduler").render())
        seen["kv"] = str(app.query_one("#kv").render())
        seen["tok_s"] = max(app.rates.tok_s_history)
        await pilot.press("s")  # sort by mailbox depth
        seen["sort"] = app.sort_index
        await pilot.press("f")
        await pilot.press(*"worker", "enter")
        await pilot.pause(0.1)
        seen["filtered"] = [row[0].strip() for row in cell_texts(app)]
        await pilot.press("p")
        frozen = app.sample
        await pilot.pause(0.8)
        seen["paused_kept_sample"] = app.sample is frozen
        await pilot.press("p")
        app.save_screenshot(screenshot)
        await pilot.press("q")
    return seen


def test_top_ui_against_a_loaded_server(top_server: RunningServer, tmp_path) -> None:
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(top_server.url, stop)) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        seen = asyncio.run(drive(top_server.url, str(tmp_path / "top.svg")))
    finally:
        stop.set()
        for w in workers:
            w.join(60)
    assert {"inferflux", "engine", "worker-0", "scheduler", "policy", "ingress"} <= set(
        seen["names"]
    )
    assert "running" in seen["scheduler"] and "tok/s" in seen["scheduler"]
    assert "KV cells used" in seen["kv"] and "prefix-cache hit rate" in seen["kv"]
    assert seen["tok_s"] > 0
    assert seen["sort"] == 1
    assert seen["filtered"] == ["worker-0"]
    assert seen["paused_kept_sample"]
    svg = (tmp_path / "top.svg").read_text()
    assert svg.startswith("<svg") and "worker-0" in svg
