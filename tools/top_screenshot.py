"""Save an SVG of inferflux-top watching a loaded server (the README's screenshot).

    python tools/top_screenshot.py --out docs/inferflux-top.svg

Starts `inferflux run` (default model, 8 slots), drives 8 streaming clients, lets the UI
poll for a few seconds, and saves what it shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time

import httpx
import openai

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from inferflux.testing import free_port, stop_process  # noqa: E402
from inferflux.top_app import TopApp  # noqa: E402


def load(url: str, model: str, stop: threading.Event) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    while not stop.is_set():
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Tell me a story about a lighthouse."}],
            max_tokens=96,
            stream=True,
        )
        for _ in stream:
            pass


async def snap(url: str, out: str, seconds: float) -> None:
    app = TopApp(url, interval=0.5)
    async with app.run_test(size=(150, 34)) as pilot:
        await pilot.pause(seconds)
        app.save_screenshot(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "docs", "inferflux-top.svg"))
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "inferflux", "run", "--port", str(port), "--n-parallel", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    clients: list[threading.Thread] = []
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        model = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]
        clients = [threading.Thread(target=load, args=(url, model, stop)) for _ in range(8)]
        for c in clients:
            c.start()
        asyncio.run(snap(url, args.out, args.seconds))
        print(f"saved {args.out}")
    finally:
        stop.set()
        for c in clients:
            c.join(60)
        stop_process(server, 60)


if __name__ == "__main__":
    main()
