"""A radix tree over token ids: which KV slots hold which token prefixes.

Every slot whose KV cache holds a token sequence (a running sequence's prompt, or a
finished sequence kept for reuse) is inserted under that sequence. `longest_match` then
finds, for a new prompt, the slots that already hold its longest prefix, so the engine can
copy those cells (llama_memory_seq_cp) instead of recomputing them.

Edges are compressed (a node holds a run of tokens), so a 2,000-token system prompt shared
by many requests costs one node, not 2,000.
"""

from __future__ import annotations


class _Node:
    __slots__ = ("edge", "children", "slots")

    def __init__(self, edge: list[int]) -> None:
        self.edge = edge  # tokens on the edge from the parent to this node
        self.children: dict[int, _Node] = {}
        self.slots: set[int] = set()  # slots whose sequence covers this whole edge


class RadixTree:
    def __init__(self) -> None:
        self._root = _Node([])
        self._paths: dict[int, list[int]] = {}  # slot -> tokens inserted for it

    @property
    def slots(self) -> list[int]:
        return list(self._paths)

    def insert(self, slot: int, tokens: list[int]) -> None:
        """Record that `slot` holds exactly `tokens` (replacing what it held before)."""
        if slot in self._paths:
            self.remove(slot)
        self._paths[slot] = list(tokens)
        node, i = self._root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                child = _Node(tokens[i:])
                node.children[tokens[i]] = child
                child.slots.add(slot)
                return
            common = _common_length(child.edge, tokens, i)
            if common < len(child.edge):
                child = self._split(node, child, common)
            child.slots.add(slot)
            node, i = child, i + common

    def remove(self, slot: int) -> None:
        tokens = self._paths.pop(slot, None)
        if tokens is None:
            return
        node, i = self._root, 0
        path: list[tuple[_Node, _Node]] = []
        while i < len(tokens):
            child = node.children[tokens[i]]
            child.slots.discard(slot)
            path.append((node, child))
            node, i = child, i + len(child.edge)
        for parent, child in reversed(path):  # prune nodes nobody holds any more
            if not child.slots and not child.children:
                del parent.children[child.edge[0]]

    def longest_match(self, tokens: list[int]) -> tuple[int, set[int]]:
        """(length, slots): the longest prefix of `tokens` held by any slot, and those slots."""
        node, i = self._root, 0
        best_len, best_slots = 0, set()
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            common = _common_length(child.edge, tokens, i)
            best_len, best_slots = i + common, child.slots
            if common < len(child.edge):
                break
            node, i = child, i + common
        return best_len, set(best_slots)

    @staticmethod
    def _split(parent: _Node, child: _Node, at: int) -> _Node:
        middle = _Node(child.edge[:at])
        middle.slots = set(child.slots)
        child.edge = child.edge[at:]
        middle.children[child.edge[0]] = child
        parent.children[middle.edge[0]] = middle
        return middle


def _common_length(edge: list[int], tokens: list[int], start: int) -> int:
    n = min(len(edge), len(tokens) - start)
    i = 0
    while i < n and edge[i] == tokens[start + i]:
        i += 1
    return i
