"""POST /v1/embeddings through the official client on the real default model: the same
input gives the same vector, a batch equals its inputs one by one, the vector has the
model's embedding size (read from the GGUF by the store's own reader) and unit length
(a full decode of 32 inputs agrees with single ones to cosine > 0.9999, float rounding),
base64 is the same floats, bad input is a 400 naming the field, and a stream under way
keeps streaming while a large embedding request runs."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import openai
import pytest

from inferflux.model.gguf import read_metadata
from tests.conftest import MODEL_ID, RunningServer
from tests.policy_support import wait_for

pytestmark = pytest.mark.model

TEXTS = ["The cat sat on the mat.", "A dog barked at the mailman.", "Quantum chromodynamics"]


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


def vectors(server: RunningServer, inputs: str | list, **extra: object) -> np.ndarray:
    reply = client(server).embeddings.create(model=MODEL_ID, input=inputs, **extra)
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return np.array([d.embedding for d in reply.data], dtype=np.float32)


def test_embeddings_are_deterministic_and_batching_changes_nothing(
    server: RunningServer, model_path: str
) -> None:
    batched = vectors(server, TEXTS)
    metadata = read_metadata(model_path)
    size = metadata[f"{metadata['general.architecture']}.embedding_length"]
    assert batched.shape == (3, size)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([vectors(server, text) for text in TEXTS])
    assert np.allclose(batched, one_by_one, atol=1e-5)
    assert np.array_equal(vectors(server, TEXTS), batched)  # the same input, the same vector
    # related sentences are closer than unrelated ones (the vectors mean something)
    assert batched[0] @ batched[1] > batched[0] @ batched[2]


def test_usage_base64_and_token_inputs(server: RunningServer) -> None:
    reply = client(server).embeddings.create(model=MODEL_ID, input=TEXTS[0])
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": TEXTS[0]}).json()["tokens"]
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == len(tokens)
    assert reply.model == MODEL_ID and reply.object == "list"
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": MODEL_ID, "input": TEXTS[0], "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, np.array(reply.data[0].embedding, dtype=np.float32))
    as_ids = vectors(server, [tokens, tokens])  # token ids in, the same vector out
    assert np.allclose(as_ids, np.array([reply.data[0].embedding] * 2), atol=1e-5)


def test_many_inputs_come_back_in_order(server: RunningServer) -> None:
    texts = [f"Sentence number {i} is about {'cats' if i % 2 else 'stars'}." for i in range(70)]
    many = vectors(server, texts)  # more inputs than one decode takes: several Embeds
    assert many.shape[0] == 70
    for i in (0, 33, 69):
        # A full decode multiplies in other kernel tiles than a 14-token one (llama.cpp
        # picks by batch size): equal to float rounding, not bit for bit.
        assert many[i] @ vectors(server, texts[i])[0] > 0.9999


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input[0]"),
        ({"input": []}, "input"),
        ({"input": [[]]}, "input[0]"),
        ({"input": [1.5]}, "input[0]"),
        ({"input": [10**9]}, "input[0]"),
        ({"input": ["ok", 3]}, "input[1]"),
        ({"input": "x", "dimensions": 3}, "dimensions"),
        ({"input": "word " * 600}, "input[0]"),
        ({"input": ["x"] * 2049}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({}, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server: RunningServer, body: dict, param: str) -> None:
    reply = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL_ID, **body})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_a_stream_keeps_going_while_a_large_embedding_request_runs(server: RunningServer) -> None:
    received: list[str] = []
    streaming = client(server)  # held: a collected client closes its connections

    def stream() -> None:
        chunks = streaming.completions.create(
            model=MODEL_ID, prompt="Once upon a time", max_tokens=300, temperature=0,
            stream=True, extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in chunks:
            received.append(chunk.choices[0].text)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        assert wait_for(lambda: len(received) >= 3, timeout_s=60)
        before = len(received)
        texts = [f"A long sentence, number {i}, to embed with the others." for i in range(300)]
        assert vectors(server, texts).shape[0] == 300
        after = len(received)
    finally:
        thread.join(120)
    assert after > before  # it streamed while the embeddings ran...
    assert not thread.is_alive() and len(received) >= 250  # ...and finished (a chunk a token)
