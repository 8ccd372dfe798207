"""Radix tree against a brute-force model (no model file needed)."""

from hypothesis import given, settings
from hypothesis import strategies as st

from inferflux.kvcache.radix import RadixTree


def brute_force(held: dict[int, list[int]], tokens: list[int]) -> tuple[int, set[int]]:
    best, slots = 0, set()
    for slot, seq in held.items():
        n = 0
        while n < min(len(seq), len(tokens)) and seq[n] == tokens[n]:
            n += 1
        if n > best:
            best, slots = n, {slot}
        elif n == best and n > 0:
            slots.add(slot)
    return best, slots


def test_shared_system_prompt_is_found() -> None:
    tree = RadixTree()
    system = list(range(100))
    tree.insert(0, system + [500, 501])
    tree.insert(1, system + [600])
    assert tree.longest_match(system + [700]) == (100, {0, 1})
    assert tree.longest_match(system + [500, 999]) == (101, {0})
    assert tree.longest_match([5]) == (0, set())
    tree.remove(0)
    assert tree.longest_match(system + [500]) == (100, {1})
    tree.remove(1)
    assert tree.longest_match(system) == (0, set())


token_lists = st.lists(st.integers(0, 3), min_size=0, max_size=12)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 5), token_lists, st.booleans()), max_size=30), token_lists)
def test_matches_brute_force(operations, query) -> None:
    tree, held = RadixTree(), {}
    for slot, tokens, insert in operations:
        if insert:
            tree.insert(slot, tokens)
            held[slot] = tokens
        else:
            tree.remove(slot)
            held.pop(slot, None)
        assert tree.longest_match(query) == brute_force(held, query)
    assert sorted(tree.slots) == sorted(held)
