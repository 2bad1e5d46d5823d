"""Metric math as pure functions: percentiles, summaries, rates, utilization, time windows.

Everything returns a finite number for any input, empty input included (0.0), so metrics JSON
never carries NaN. Percentiles interpolate linearly between closest ranks (numpy's default), so
they are monotone in q and independent of input order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values; 0.0 when empty."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = (n - 1) * min(max(q, 0.0), 100.0) / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, n - 1)
    frac = rank - lo
    a, b = float(sorted_values[lo]), float(sorted_values[hi])
    # weighted form, clamped: (b - a) would overflow for values near the float maximum
    return min(max(a * (1.0 - frac) + b * frac, a), b)


@dataclass(frozen=True)
class Summary:
    count: int
    mean: float
    minimum: float
    maximum: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float


def summarize(values: Iterable[float]) -> Summary:
    data = sorted(v for v in values if math.isfinite(v))
    if not data:
        return Summary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    p50, p90, p95, p99, p999 = (percentile(data, q) for q in PERCENTILES)
    return Summary(len(data), mean(data), data[0], data[-1], p50, p90, p95, p99, p999)


def rate(count: float, seconds: float) -> float:
    """Events per second; 0.0 for an empty or degenerate interval."""
    if seconds <= 0 or not math.isfinite(seconds) or not math.isfinite(count):
        return 0.0
    return min(max(count, 0.0) / seconds, sys.float_info.max)


def utilization(used: float, total: float) -> float:
    """Fraction in [0, 1]; 0.0 when the total is unknown."""
    if total <= 0 or not math.isfinite(total) or not math.isfinite(used):
        return 0.0
    return min(max(used / total, 0.0), 1.0)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, within [min, max] for any finite values: the exact sum divided once, or,
    when that sum overflows, the sum of the terms scaled down by a power of two above ``n`` (exact
    for such huge terms, and the scaled sum cannot overflow; dividing each term by ``n`` instead
    rounds, and ``n`` terms rounded up can overflow again)."""
    if not values:
        return 0.0
    n = len(values)
    try:
        average = math.fsum(values) / n
    except OverflowError:
        scale = 2.0 ** n.bit_length()
        average = math.fsum(v / scale for v in values) / n * scale
    return min(max(average, min(values)), max(values))
