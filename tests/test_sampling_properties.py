"""Hypothesis properties of the host sampler (runtime/sampling.py) against an independent oracle.

The oracle computes, from the definitions and in a different way than ``draw`` does (sorting and
Python sums instead of partitions and numpy cumsums), which tokens each filter allows and the
distribution that is left:

- top-k keeps every token whose scaled logit is at least the k-th largest (ties all stay);
- min-p keeps tokens whose probability is at least ``min_p`` times the largest;
- top-p keeps, in order of decreasing probability (ties by token id), each token whose
  predecessors hold less than ``top_p`` of the mass.

``draw`` must never return a token the oracle excludes, and with evenly spaced uniforms its
counts must match the oracle's distribution to within one draw per token. Seeded samplers must be
reproducible, and the seeded RNG's draws must follow the distribution within a binomial bound
(fixed seeds, so the check is deterministic).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis_profiles import costly

from ferrum.types import SamplingParams
from runtime.sampling import SequenceSampler, draw

FUZZ = 1e-9  # relative slack at a filter boundary: float rounding may put a token on either side

logit_values = st.one_of(st.floats(-40, 40, width=32), st.sampled_from([0.0, 1.0, -1.0, 3.5]))  # ties are common
logit_rows = st.lists(logit_values, min_size=1, max_size=40).map(lambda v: np.array(v, dtype=np.float32))
temperatures = st.one_of(st.just(1.0), st.floats(0.05, 5.0))
top_ps = st.one_of(st.just(1.0), st.floats(0.01, 1.0))
min_ps = st.one_of(st.just(0.0), st.floats(0.0, 1.0))


def top_k_allowed(z: list[float], k: int) -> set[int]:
    if not 0 < k < len(z):
        return set(range(len(z)))
    kth = sorted(z, reverse=True)[k - 1]
    return {i for i, v in enumerate(z) if v >= kth}


def softmax_over(z: list[float], keep: set[int]) -> dict[int, float]:
    top = max(z[i] for i in keep)
    weights = {i: math.exp(z[i] - top) for i in keep}
    total = math.fsum(weights.values())
    return {i: w / total for i, w in weights.items()}


def oracle(x: np.ndarray, temperature: float, top_p: float, top_k: int, min_p: float):
    """(tokens surely excluded, final distribution or None when a token sits on a filter boundary)."""
    z = [float(v) / temperature for v in x.astype(np.float64)]
    keep = top_k_allowed(z, top_k)
    probs = softmax_over(z, keep)
    excluded = set(range(len(z))) - keep
    ambiguous = False
    if min_p:
        threshold = min_p * max(probs.values())
        for i, p in list(probs.items()):
            if p < threshold * (1 - FUZZ):
                excluded.add(i)
                del probs[i]
            elif p < threshold * (1 + FUZZ):
                ambiguous = True
    if top_p < 1.0:
        target = top_p * math.fsum(probs.values())
        kept, before = {}, 0.0
        for i in sorted(probs, key=lambda i: (-probs[i], i)):
            greater = math.fsum(p for p in probs.values() if p > probs[i])  # whatever the tie order
            if greater >= target * (1 + FUZZ) + 1e-300:
                excluded.add(i)
            if abs(before - target) <= FUZZ * target:
                ambiguous = True
            if before < target:
                kept[i] = probs[i]
            before += probs[i]
        probs = kept
    if ambiguous:
        return excluded, None
    total = math.fsum(probs.values())
    return excluded, {i: p / total for i, p in probs.items()}


@given(logit_rows, temperatures, top_ps, st.integers(0, 45), min_ps, st.floats(0.0, 1.0, exclude_max=True))
def test_draw_never_leaves_the_allowed_set(x, temperature, top_p, top_k, min_p, uniform):
    token = draw(x, (temperature, top_p, float(top_k), min_p, uniform))
    excluded, _ = oracle(x, temperature, top_p, top_k, min_p)
    assert 0 <= token < len(x)
    assert token not in excluded


@given(logit_rows, st.floats(0.0, 1.0, exclude_max=True))
def test_temperature_zero_and_top_k_one_are_argmax(x, uniform):
    assert draw(x, (0.0, 1.0, 0.0, 0.0, uniform)) == int(np.argmax(x))
    best = {i for i, v in enumerate(x) if v == x.max()}
    assert draw(x, (1.0, 1.0, 1.0, 0.0, uniform)) in best  # top-k 1 keeps only the maximum (and its ties)


@costly(ci=30, deep=5_000)
@given(logit_rows, temperatures, top_ps, st.integers(0, 45), min_ps)
def test_draw_follows_the_filtered_distribution(x, temperature, top_p, top_k, min_p):
    """Evenly spaced uniforms make the inverse CDF's counts exact up to one draw per token."""
    _, target = oracle(x, temperature, top_p, top_k, min_p)
    assume(target is not None)
    n = 1000
    counts = Counter(draw(x, (temperature, top_p, float(top_k), min_p, (i + 0.5) / n)) for i in range(n))
    assert set(counts) <= set(target)
    for token, p in target.items():
        assert abs(counts[token] - n * p) <= 1 + 1e-6 * n, (token, counts[token], n * p)


# -- SequenceSampler -----------------------------------------------------------------------------

def penalized(x: np.ndarray, params: SamplingParams, prompt: list[int], outputs: list[int]) -> np.ndarray:
    """The logits after bias and penalties, from their definitions (float64)."""
    y = x.astype(np.float64)
    for token, bias in params.logit_bias.items():
        if token < len(y):
            y[token] += bias
    for token in set(prompt) | set(outputs):
        if token < len(y) and params.repetition_penalty != 1.0:
            y[token] = y[token] / params.repetition_penalty if y[token] > 0 else y[token] * params.repetition_penalty
    for token, count in Counter(outputs).items():
        y[token] -= params.presence_penalty + params.frequency_penalty * count
    return y


@st.composite
def penalty_params(draw_, vocab: int) -> SamplingParams:
    return SamplingParams(
        temperature=draw_(st.sampled_from([0.0, 0.7])),
        top_k=draw_(st.sampled_from([None, 1])),
        repetition_penalty=draw_(st.one_of(st.just(1.0), st.floats(0.5, 2.0))),
        presence_penalty=draw_(st.floats(-2, 2)),
        frequency_penalty=draw_(st.floats(-2, 2)),
        logit_bias=draw_(st.dictionaries(st.integers(0, vocab + 3), st.floats(-100, 100), max_size=4)),
    )


@costly(ci=50, deep=20_000)
@given(st.data(), st.integers(2, 30))
def test_greedy_with_penalties_is_the_argmax_of_the_penalized_logits(data, vocab):
    params = data.draw(penalty_params(vocab))
    assume(params.is_greedy)
    params.validate()
    prompt = data.draw(st.lists(st.integers(0, vocab - 1), max_size=8))
    sampler = SequenceSampler(params, prompt)
    outputs: list[int] = []
    for _ in range(data.draw(st.integers(1, 6))):
        x = data.draw(st.lists(st.floats(-20, 20, width=32), min_size=vocab, max_size=vocab)).copy()
        x = np.array(x, dtype=np.float32)
        token, _ = sampler.sample(x)
        y = penalized(x, params, prompt, outputs)
        assert y[token] >= y.max() - 1e-4 * max(1.0, abs(y.max())), "not the argmax of the penalized logits"
        outputs.append(token)
    assert sampler.output_counts == Counter(outputs)


@given(logit_rows, temperatures, top_ps, st.one_of(st.none(), st.integers(2, 45)), min_ps,
       st.integers(0, 2**32), st.integers(1, 8))
def test_seeded_samplers_are_reproducible_and_draw_one_uniform_each(x, temperature, top_p, top_k, min_p, seed, steps):
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p or None, seed=seed)
    a, b = SequenceSampler(params, [1, 2]), SequenceSampler(params, [1, 2])
    tokens_a = [a.sample(x)[0] for _ in range(steps)]
    assert tokens_a == [b.sample(x)[0] for _ in range(steps)]
    rng = np.random.default_rng(seed)  # the documented stream: one uniform per draw, in order
    row = (temperature, top_p, float(top_k or 0), float(min_p or 0.0))
    assert tokens_a == [draw(x, (*row, float(rng.random()))) for _ in range(steps)]
    # a sibling forked with offset k samples as a fresh sampler seeded seed + k would
    for offset in (1, 3):
        child = a.fork(offset)
        fresh = SequenceSampler(SamplingParams(**{**vars(params), "seed": seed + offset}), [1, 2])
        assert [child.sample(x)[0] for _ in range(steps)] == [fresh.sample(x)[0] for _ in range(steps)]


def test_greedy_consumes_no_randomness():
    greedy = SequenceSampler(SamplingParams.greedy(seed=5), [])
    greedy.sample(np.array([0.0, 2.0, 1.0], dtype=np.float32))
    assert greedy.rng.random() == np.random.default_rng(5).random()


CASES = [  # (logits, temperature, top_p, top_k, min_p)
    ([0.0, 0.5, 1.0, 1.5, 2.0], 1.0, 1.0, None, None),
    ([2.0, 2.0, 1.0, 0.0, -1.0, -3.0], 0.7, 0.9, None, None),
    ([3.0, 1.0, 0.9, 0.5, 0.0, 0.0, -2.0], 1.3, 1.0, 4, None),
    ([1.0, 0.8, 0.3, -0.5, -4.0], 1.0, 1.0, None, 0.3),
    ([4.0, 3.0, 3.0, 2.5, 1.0, 0.0, -1.0, -1.0], 2.0, 0.8, 6, 0.05),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", [0])
def test_seeded_draws_follow_the_target_distribution(case, seed):
    """Frequencies from the sampler's own RNG within 5 binomial standard deviations of the oracle's
    probabilities (fixed seeds: deterministic), and never a token the oracle excludes."""
    logits, temperature, top_p, top_k, min_p = case
    x = np.array(logits, dtype=np.float32)
    _, target = oracle(x, temperature, top_p, top_k or 0, min_p or 0.0)
    sampler = SequenceSampler(SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed), [])
    n = 5_000
    counts = Counter(sampler.sample(x)[0] for _ in range(n))
    assert set(counts) <= set(target)
    for token, p in target.items():
        assert abs(counts[token] - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1, (token, counts[token], n * p)
