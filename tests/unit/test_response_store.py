"""The Responses API's store: bounded in time, per principal and in bytes; a principal
sees only its own responses."""

from __future__ import annotations

from inferflux.ingress.request_types import ChatMessage
from inferflux.ingress.response_store import ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def conversation(text: str = "hi") -> list[ChatMessage]:
    return [ChatMessage("user", text), ChatMessage("assistant", "hello")]


def test_a_principal_sees_only_its_own() -> None:
    store = ResponseStore()
    store.put("key:a", "resp_1", b'{"id": "resp_1"}', conversation())
    assert store.get("key:a", "resp_1") is not None
    assert store.get("key:b", "resp_1") is None  # exactly like an unknown id
    assert not store.delete("key:b", "resp_1")
    assert store.get("key:a", "resp_1") is not None
    assert store.delete("key:a", "resp_1") and store.get("key:a", "resp_1") is None


def test_responses_expire() -> None:
    clock = Clock()
    store = ResponseStore(ttl_s=10, clock=clock)
    store.put("p", "resp_1", b"{}", conversation())
    clock.now = 5
    store.put("p", "resp_2", b"{}", conversation())
    clock.now = 10.5
    assert store.get("p", "resp_1") is None and store.get("p", "resp_2") is not None
    clock.now = 15.5
    assert store.get("p", "resp_2") is None and len(store) == 0 and store.bytes_used == 0


def test_each_principal_keeps_its_newest() -> None:
    store = ResponseStore(max_per_principal=3)
    for i in range(5):
        store.put("busy", f"resp_{i}", b"{}", conversation())
    store.put("quiet", "resp_q", b"{}", conversation())
    assert [store.get("busy", f"resp_{i}") is not None for i in range(5)] == [
        False, False, True, True, True,
    ]  # fmt: skip
    assert store.get("quiet", "resp_q") is not None  # another principal's are untouched


def test_the_store_stays_under_its_byte_budget() -> None:
    store = ResponseStore(max_bytes=10_000)
    body = b"x" * 1_000
    for i in range(50):
        store.put(f"p{i}", f"resp_{i}", body, conversation("y" * 500))
        assert store.bytes_used <= 10_000
    assert store.get("p49", "resp_49") is not None and store.get("p0", "resp_0") is None
    store.put("p", "huge", b"z" * 20_000, conversation())  # larger than the whole store
    assert store.get("p", "huge") is None and store.get("p49", "resp_49") is not None
