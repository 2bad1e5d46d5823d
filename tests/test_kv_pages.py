"""The page model agrees with TVM's paged KV cache after every operation."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.artifact import LlmArtifact
from runtime.kv_pages import PagedKVModel
from runtime.model_runner import KVCacheConfig, ModelRunner

PAGE = 16


@pytest.fixture(scope="module")
def runner(tiny_artifact):
    r = ModelRunner(LlmArtifact.open(tiny_artifact))
    r.create_kv_cache(KVCacheConfig(max_batch_size=16, max_total_tokens=60 * PAGE, prefill_chunk_size=256, page_size=PAGE))
    return r


@pytest.mark.parametrize("seed", range(6))
def test_page_model_matches_tvm(runner, seed):
    rng = np.random.default_rng(seed)
    runner.create_kv_cache(runner.kv)
    model = PagedKVModel(runner.total_pages, PAGE)
    assert model.free_pages == runner.available_pages()
    next_id = 0
    for _ in range(60):
        seqs = model.sequences()
        op = rng.choice(["add", "append", "fork", "popn", "remove"], p=[0.2, 0.35, 0.2, 0.1, 0.15])
        if op == "add" or not seqs:
            runner.add_sequence(next_id)
            model.add(next_id)
            next_id += 1
        elif op == "append":
            seq = int(rng.choice(seqs))
            n = int(rng.integers(1, 40))
            if model.pages_to_append(seq, n) > model.free_pages:
                continue
            model.append(seq, n)
            runner.prefill([seq], [list(rng.integers(0, 300, size=n))])
        elif op == "fork":
            parent = int(rng.choice(seqs))
            pos = int(rng.integers(0, model.length(parent) + 1))
            if model.pages_to_fork(parent, pos) > model.free_pages:
                continue
            model.fork(parent, next_id, pos)
            runner.fork_sequence(parent, next_id, pos)
            next_id += 1
        elif op == "popn":
            seq = int(rng.choice(seqs))
            n = int(rng.integers(0, model.length(seq) + 1))
            if model.free_pages == 0:  # popping into a shared block forks, which may copy a page
                continue
            model.popn(seq, n)
            runner.popn(seq, n)
        else:
            seq = int(rng.choice(seqs))
            freed = model.pages_freed_by_remove(seq)
            before = model.free_pages
            model.remove(seq)
            runner.remove_sequence(seq)
            assert model.free_pages == before + freed
        assert model.free_pages == runner.available_pages(), op
        owned = model.owned_pages()
        assert len(owned) == len(set(owned)) and len(owned) + model.free_pages == model.total_pages
        for seq in model.sequences():
            assert model.length(seq) == runner.sequence_length(seq)
        assert model.stored_tokens == sum(model.length(seq) for seq in model.sequences())
    for seq in model.sequences():
        model.remove(seq)
        runner.remove_sequence(seq)
    assert model.free_pages == runner.available_pages() == runner.total_pages
