"""Prefix cache: finished sequences kept in the KV cache, found by a radix tree over token ids.

When a request finishes, its sequence can stay in the paged KV cache instead of being removed;
its tokens go into the radix tree. A new request whose prompt shares a prefix with a cached
sequence forks it at the shared length (``kv_state_fork_sequence``: full pages are shared, not
copied) and prefills only the rest. Entries are evicted least-recently-used when the scheduler
needs their pages. Pure Python; the scheduler turns its decisions into KV operations.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Node:
    edge: tuple[int, ...] = ()
    children: dict[int, _Node] = field(default_factory=dict)
    seqs: set[int] = field(default_factory=set)


class RadixTree:
    """Compressed trie of token sequences; each node knows which sequences pass through it."""

    def __init__(self) -> None:
        self.root = _Node()

    def insert(self, tokens: tuple[int, ...], seq_id: int) -> None:
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                node.children[tokens[i]] = _Node(tokens[i:], {}, {seq_id})
                return
            common = _common_prefix(child.edge, tokens[i:])
            if common < len(child.edge):  # split the edge at the divergence
                head = _Node(child.edge[:common], {child.edge[common]: child}, set(child.seqs))
                child.edge = child.edge[common:]
                node.children[tokens[i]] = head
                child = head
            child.seqs.add(seq_id)
            node, i = child, i + common

    def remove(self, tokens: tuple[int, ...], seq_id: int) -> None:
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children[tokens[i]]
            child.seqs.discard(seq_id)
            if not child.seqs:
                del node.children[tokens[i]]
                return
            node, i = child, i + len(child.edge)

    def longest_match(self, tokens: tuple[int, ...]) -> tuple[int, int | None]:
        """(length of the longest cached prefix of ``tokens``, a sequence holding it)."""
        node, i, best = self.root, 0, (0, None)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            common = _common_prefix(child.edge, tokens[i:])
            best = (i + common, next(iter(child.seqs)))
            if common < len(child.edge):
                break
            node, i = child, i + common
        return best


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Cached sequences (KV sequence id → tokens whose KV it holds), LRU-ordered, plus counters."""

    def __init__(self) -> None:
        self.tree = RadixTree()
        self.entries: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.saved_tokens = 0  # prompt tokens whose prefill hits skipped, since start
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self.entries

    def insert(self, seq_id: int, tokens: list[int]) -> list[int]:
        """Cache ``seq_id``; return cached sequences it makes redundant (their tokens are a prefix
        of ``tokens``): the caller removes those from the KV cache."""
        key = tuple(tokens)
        redundant = [sid for sid, toks in self.entries.items() if key[: len(toks)] == toks]
        for sid in redundant:
            self.drop(sid)
        self.entries[seq_id] = key
        self.tree.insert(key, seq_id)
        return redundant

    def lookup(self, prompt: list[int]) -> tuple[int | None, int]:
        """(cached sequence to fork, tokens it covers) for a new prompt, without side effects.
        At least the last prompt token is always left to compute: its logits start generation."""
        length, seq_id = self.tree.longest_match(tuple(prompt[:-1]))
        return (seq_id, length) if seq_id is not None and length > 0 else (None, 0)

    def record(self, seq_id: int | None, length: int) -> None:
        """Count an admission's lookup result and refresh the entry it used."""
        if seq_id is None:
            self.misses += 1
            return
        self.hits += 1
        self.saved_tokens += length
        self.entries.move_to_end(seq_id)

    @property
    def avg_matched_length(self) -> float:
        """Mean prefix length of the hits (the hits' saved tokens over their count: no per-hit list)."""
        return self.saved_tokens / self.hits if self.hits else 0.0

    def drop(self, seq_id: int) -> None:
        self.tree.remove(self.entries.pop(seq_id), seq_id)

    def lru(self, exclude: int | None = None) -> int | None:
        """Least recently used entry (not ``exclude``), or None."""
        return next((sid for sid in self.entries if sid != exclude), None)
