"""How an embedding request's inputs are packed into decodes (worker/embedding.py)."""

from inferflux.worker.embedding import pack


def test_inputs_are_packed_in_order_within_both_bounds() -> None:
    assert pack([3, 3, 3], max_tokens=6, max_sequences=8) == [[0, 1], [2]]
    assert pack([1] * 5, max_tokens=100, max_sequences=2) == [[0, 1], [2, 3], [4]]
    assert pack([6, 1, 6], max_tokens=6, max_sequences=8) == [[0], [1], [2]]


def test_every_input_is_in_exactly_one_decode() -> None:
    lengths = [(i * 37) % 512 + 1 for i in range(300)]
    groups = pack(lengths, max_tokens=512, max_sequences=32)
    assert [i for group in groups for i in group] == list(range(300))
    assert all(sum(lengths[i] for i in g) <= 512 and len(g) <= 32 for g in groups)
