"""Hypothesis state machine over the prefix cache's radix tree against a naive oracle.

The oracle is an ordered dictionary of cached sequences (least recently used first) whose lookup
scans every entry for the longest common prefix with ``prompt[:-1]``. After every operation the
radix tree must answer exactly what the oracle answers: same match length, a sequence that really
holds that prefix, same LRU victim, same redundant entries on insert.
"""

from __future__ import annotations

import itertools

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from hypothesis_profiles import costly

from runtime.prefix_cache import PrefixCache

# a small alphabet so prompts share prefixes often; long enough to split edges many ways
tokens = st.lists(st.integers(0, 3), min_size=0, max_size=12)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Oracle:
    """Cached sequences as a plain ordered dict, least recently used first."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, ...]] = {}

    def insert(self, seq_id: int, toks: tuple[int, ...]) -> list[int]:
        redundant = [sid for sid, held in self.entries.items() if toks[: len(held)] == held]
        for sid in redundant:
            del self.entries[sid]
        self.entries[seq_id] = toks
        return redundant

    def best_length(self, prompt: tuple[int, ...]) -> int:
        query = prompt[:-1]
        return max((common_prefix(held, query) for held in self.entries.values()), default=0)

    def touch(self, seq_id: int) -> None:
        self.entries[seq_id] = self.entries.pop(seq_id)

    def lru(self, exclude: int | None) -> int | None:
        return next((sid for sid in self.entries if sid != exclude), None)


class PrefixCacheMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.cache = PrefixCache()
        self.oracle = Oracle()
        self.ids = itertools.count()
        self.hits = self.misses = self.saved = 0

    @rule(toks=tokens)
    def insert(self, toks):
        seq_id = next(self.ids)
        redundant = self.cache.insert(seq_id, toks)
        assert sorted(redundant) == sorted(self.oracle.insert(seq_id, tuple(toks)))

    @rule(prompt=st.lists(st.integers(0, 3), min_size=1, max_size=14), use=st.booleans())
    def lookup(self, prompt, use):
        """A new request's lookup; ``use`` admits it (records the hit, refreshing the entry)."""
        seq_id, length = self.cache.lookup(prompt)
        expected = self.oracle.best_length(tuple(prompt))
        assert length == expected
        if expected == 0:
            assert seq_id is None
        else:
            assert seq_id in self.oracle.entries
            assert common_prefix(self.oracle.entries[seq_id], tuple(prompt[:-1])) >= length
        assert length <= len(prompt) - 1  # the last prompt token is always computed
        if use:
            self.cache.record(seq_id, length)
            if seq_id is None:
                self.misses += 1
            else:
                self.hits += 1
                self.saved += length
                self.oracle.touch(seq_id)

    @precondition(lambda self: self.oracle.entries)
    @rule(data=st.data())
    def drop(self, data):
        seq_id = data.draw(st.sampled_from(sorted(self.oracle.entries)))
        self.cache.drop(seq_id)
        del self.oracle.entries[seq_id]

    @rule(exclude=st.none() | st.integers(0, 30))
    def evict(self, exclude):
        """The scheduler's LRU eviction: the victim is the oldest entry that is not ``exclude``."""
        victim = self.cache.lru(exclude)
        assert victim == self.oracle.lru(exclude)
        if victim is not None:
            self.cache.drop(victim)
            del self.oracle.entries[victim]

    @invariant()
    def same_entries_in_lru_order(self):
        assert list(self.cache.entries.items()) == list(self.oracle.entries.items())
        assert len(self.cache) == len(self.oracle.entries)
        assert (self.cache.hits, self.cache.misses, self.cache.saved_tokens) == (self.hits, self.misses, self.saved)
        assert self.cache.avg_matched_length == (self.saved / self.hits if self.hits else 0.0)

    @invariant()
    def tree_holds_exactly_the_entries(self):
        """Every node's sequences are the entries whose tokens run through all of its edge, and no
        node is left without one (a dropped entry leaves nothing behind)."""
        def walk(node, depth_tokens):
            for first, child in node.children.items():
                assert child.edge and child.edge[0] == first
                path = depth_tokens + child.edge
                holders = {sid for sid, held in self.oracle.entries.items() if held[: len(path)] == path}
                assert child.seqs == holders and child.seqs
                walk(child, path)

        walk(self.cache.tree.root, ())


TestPrefixCache = PrefixCacheMachine.TestCase
TestPrefixCache.settings = costly(ci=100, deep=3_000, ci_steps=30)
