"""Hypothesis properties of the metric math (runtime/stats.py) and of the telemetry built on it."""

from __future__ import annotations

import json
import math
import random

from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import costly

from ferrum.serde import to_json
from runtime.stats import mean, percentile, rate, summarize, utilization
from runtime.telemetry import EngineTelemetry

values = st.lists(st.floats(min_value=0, allow_nan=False, allow_infinity=False), max_size=200)
# numpy's interpolation overflows near the float maximum, so it is the oracle only below that
moderate = st.lists(st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False), max_size=200)
any_floats = st.floats(allow_nan=True, allow_infinity=True)


@given(values)
def test_percentiles_are_ordered_and_bounded(data):
    s = summarize(data)
    if not data:
        assert s == summarize([]) and s.count == 0 and s.p999 == 0.0
        return
    assert s.minimum <= s.p50 <= s.p90 <= s.p95 <= s.p99 <= s.p999 <= s.maximum
    assert s.minimum <= s.mean <= s.maximum
    assert s.count == len(data)


@given(values, st.randoms(use_true_random=False))
def test_percentiles_do_not_depend_on_input_order(data, rng: random.Random):
    shuffled = list(data)
    rng.shuffle(shuffled)
    assert summarize(shuffled) == summarize(data)


@given(moderate, st.floats(min_value=0, max_value=100))
def test_percentile_matches_linear_interpolation_of_numpy(data, q):
    import numpy as np

    if data:
        assert math.isclose(percentile(sorted(data), q), float(np.percentile(data, q)), rel_tol=1e-9, abs_tol=1e-6)


@given(any_floats, any_floats)
def test_rates_and_utilization_are_finite_and_in_range(x, y):
    r = rate(x, y)
    u = utilization(x, y)
    assert math.isfinite(r) and r >= 0
    assert math.isfinite(u) and 0.0 <= u <= 1.0


@given(st.lists(any_floats, max_size=50))
def test_summaries_ignore_non_finite_samples(data):
    s = summarize(data)
    finite = [v for v in data if math.isfinite(v)]
    assert s.count == len(finite)
    assert all(math.isfinite(v) for v in vars(s).values())


def test_the_mean_of_subnormal_or_huge_values_stays_within_min_and_max():
    tiny, huge = 5e-324, 1.7976931348623157e308
    assert mean([tiny, tiny]) == tiny
    assert mean([huge, huge]) == huge
    assert mean([huge] * 3) == huge  # each term divided by 3 rounds up: their sum overflowed again
    s = summarize([tiny, tiny, 2 * tiny])
    assert s.minimum <= s.mean <= s.maximum


def test_empty_inputs_give_zero():
    assert percentile([], 50) == 0.0 and mean([]) == 0.0 and rate(5, 0) == 0.0 and utilization(1, 0) == 0.0


@costly(ci=40, deep=5_000)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["completed", "failed", "cancelled"])), max_size=12))
def test_telemetry_json_never_carries_nan_and_counts_add_up(requests):
    t = EngineTelemetry()
    for i, (tokens, status) in enumerate(requests):
        rid = f"r{i}"
        t.on_arrival(rid)
        t.on_admitted(rid)
        t.on_tokens(rid, tokens)
        t.on_step(1, tokens, 0.001, 8)
        t.on_finish(rid, status, 5, tokens)
    blob = json.dumps(to_json(t.engine_metrics(0)), allow_nan=False)  # raises on NaN/inf
    metrics = json.loads(blob)
    assert metrics["total_requests"] == len(requests)
    assert metrics["successful_requests"] == sum(s == "completed" for _, s in requests)
    latency = to_json(t.latency_metrics())
    json.dumps(latency, allow_nan=False)
    batching = t.batching_metrics()
    assert 0.0 <= batching.batch_utilization <= 1.0
