"""Hypothesis state machine: the page model (runtime/kv_pages.py) against TVM's own paged KV cache.

Random adds, appends (one sequence's prefill, several sequences in one prefill, a batch of
decodes), forks at any position, pops and removes are applied to both; after every operation the
free-page counts and every sequence's length must agree. The scheduler trusts the model's page
counts to keep TVM from running out of pages mid-step (which aborts the process), so any
disagreement is a crash waiting to happen. Operations the model says do not fit are not sent to
TVM. Needs the compiled tiny artifact, hence slow.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from hypothesis_profiles import costly

from runtime.artifact import LlmArtifact
from runtime.kv_pages import PagedKVModel
from runtime.model_runner import KVCacheConfig, ModelRunner

PAGE, PAGES, MAX_BATCH = 16, 24, 8


@pytest.fixture(scope="module")
def runner(tiny_artifact):
    return ModelRunner(LlmArtifact.open(tiny_artifact))


def kv_machine(runner: ModelRunner) -> type[RuleBasedStateMachine]:
    class KVMachine(RuleBasedStateMachine):
        @initialize()
        def fresh_cache(self):
            runner.create_kv_cache(KVCacheConfig(MAX_BATCH, PAGES * PAGE, prefill_chunk_size=128, page_size=PAGE))
            self.model = PagedKVModel(runner.total_pages, PAGE)
            self.ids = itertools.count()
            self.rng = np.random.default_rng(0)
            assert self.model.free_pages == runner.available_pages()

        def tokens(self, n: int) -> list[int]:
            return [int(t) for t in self.rng.integers(0, runner.config.vocab_size, size=n)]

        def seqs(self) -> list[int]:
            return sorted(self.model.sequences())

        @precondition(lambda self: len(self.model.sequences()) < MAX_BATCH)
        @rule()
        def add(self):
            seq = next(self.ids)
            self.model.add(seq)
            runner.add_sequence(seq)

        @precondition(lambda self: self.model.sequences())
        @rule(data=st.data())
        def prefill(self, data):
            """One prefill over one or several sequences, each with its own chunk length."""
            seqs = data.draw(st.lists(st.sampled_from(self.seqs()), min_size=1, max_size=3, unique=True))
            ns = [data.draw(st.integers(1, 40)) for _ in seqs]
            if sum(self.model.pages_to_append(s, n) for s, n in zip(seqs, ns)) > self.model.free_pages:
                return
            for seq, n in zip(seqs, ns):
                self.model.append(seq, n)
            runner.prefill(seqs, [self.tokens(n) for n in ns])

        @precondition(lambda self: self.model.sequences())
        @rule(data=st.data())
        def decode(self, data):
            seqs = data.draw(st.lists(st.sampled_from(self.seqs()), min_size=1, max_size=MAX_BATCH, unique=True))
            if any(self.model.length(s) == 0 for s in seqs):  # decode continues a sequence
                return
            if sum(self.model.pages_to_append(s, 1) for s in seqs) > self.model.free_pages:
                return
            for seq in seqs:
                self.model.append(seq, 1)
            runner.decode(seqs, self.tokens(len(seqs)))

        @precondition(lambda self: self.model.sequences() and len(self.model.sequences()) < MAX_BATCH)
        @rule(data=st.data())
        def fork(self, data):
            parent = data.draw(st.sampled_from(self.seqs()))
            length = self.model.length(parent)
            pos = data.draw(st.one_of(st.just(-1), st.just(length), st.integers(0, length),
                                      st.sampled_from(range(0, length + 1, PAGE))))
            if self.model.pages_to_fork(parent, pos) > self.model.free_pages:
                return
            child = next(self.ids)
            self.model.fork(parent, child, pos)
            runner.fork_sequence(parent, child, pos)

        @precondition(lambda self: self.model.sequences())
        @rule(data=st.data())
        def popn(self, data):
            seq = data.draw(st.sampled_from(self.seqs()))
            n = data.draw(st.integers(0, self.model.length(seq)))
            if self.model.free_pages == 0:  # popping into a shared block forks it, which may copy a page
                return
            self.model.popn(seq, n)
            runner.popn(seq, n)

        @precondition(lambda self: self.model.sequences())
        @rule(data=st.data())
        def remove(self, data):
            seq = data.draw(st.sampled_from(self.seqs()))
            before, freed = self.model.free_pages, self.model.pages_freed_by_remove(seq)
            self.model.remove(seq)
            runner.remove_sequence(seq)
            assert self.model.free_pages == before + freed

        @invariant()
        def same_pages_and_lengths(self):
            assert self.model.free_pages == runner.available_pages()
            owned = self.model.owned_pages()
            assert len(owned) == len(set(owned)) and len(owned) + self.model.free_pages == self.model.total_pages
            for seq in self.model.sequences():
                assert self.model.length(seq) == runner.sequence_length(seq)
            assert self.model.stored_tokens == sum(self.model.length(s) for s in self.model.sequences())

        def teardown(self):
            for seq in self.seqs():
                self.model.remove(seq)
                runner.remove_sequence(seq)
            assert self.model.free_pages == runner.available_pages() == runner.total_pages

    return KVMachine


@pytest.mark.slow
def test_page_model_matches_tvm_for_any_operation_sequence(runner):
    run_state_machine_as_test(kv_machine(runner), settings=costly(ci=40, deep=1_000, ci_steps=30))
