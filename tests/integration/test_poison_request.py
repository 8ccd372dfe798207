"""A request that crashes the model worker (issue 13): it is failed alone, with a clear
error, after crashing it twice in a row; the streams beside it resume exactly; the server
keeps serving. The crash is real (the worker process aborts) and comes from the chaos
mode's fault injection, the only way to make llama.cpp crash on demand."""

from __future__ import annotations

import openai
import pytest
import trio

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.streams import reference_texts, stream_chat

pytestmark = pytest.mark.model

PILL = "violet-anvil-5521"
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def poisonable(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    config = tmp_path_factory.mktemp("poison") / "poison.toml"
    config.write_text(f'[server]\nchaos_poison_text = "{PILL}"\n')
    yield from serving(tmp_path_factory, "poison", 4, "--chaos", "--config", str(config))


async def test_a_poison_request_is_failed_alone_and_the_others_resume(
    poisonable: RunningServer,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{poisonable.url}/v1", api_key="x", max_retries=0)
    questions = ["Write a story about a red fox.", "Explain how rain forms."]
    kwargs = dict(model=MODEL_ID, max_tokens=120, extra_body=GREEDY)
    reference = await reference_texts(client, questions, **kwargs)
    received: dict[str, list[str]] = {q: [] for q in questions}
    poisoned: list[openai.APIStatusError] = []

    async def stream(q: str) -> None:
        await stream_chat(client, q, received[q], **kwargs)

    async def poison() -> None:
        try:
            await client.chat.completions.create(
                messages=[{"role": "user", "content": f"Repeat: {PILL}"}], **kwargs
            )
        except openai.APIStatusError as exc:
            poisoned.append(exc)

    async with trio.open_nursery() as nursery:
        for q in questions:
            nursery.start_soon(stream, q)
        with trio.fail_after(60):
            while min(len(v) for v in received.values()) < 10:
                await trio.sleep(0.01)
        nursery.start_soon(poison)
    (error,) = poisoned
    assert error.status_code == 400 and error.body["code"] == "generation_failed"
    assert "crashes in a row" in error.body["message"]
    for q in questions:
        assert "".join(received[q]) == reference[q]  # resumed exactly, nothing lost
    assert poisonable.metric("inferflux:actor_restarts_total", actor="worker-0") == 2
    reply = await client.chat.completions.create(
        messages=[{"role": "user", "content": "Hi"}], model=MODEL_ID, max_tokens=3
    )
    assert reply.usage.completion_tokens > 0
