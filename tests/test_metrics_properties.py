"""Hypothesis properties of the metrics types (ferrum/metrics.py) and of the telemetry that fills them.

The Rust originals (tests/spec/metrics.rs) are the oracle. Each struct's fields and their Rust
types are read from the spec; JSON that the Rust engine could emit is generated from those types,
decoded into the Python dataclass (strictly: exactly the Rust field names, values of the right
kind) and encoded again with ``to_json``: it must come back equal. The other way round, every
snapshot ``EngineTelemetry`` produces for a generated event history must be JSON the Rust types
accept (no null for a non-optional float, unsigned integers non-negative, f32 fields in range),
and its aggregates must agree with the events: counts exact, rates over the window exact,
means and percentiles within the samples' range, utilizations within [0, 1] (or percent).
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import math
import re
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_profiles import costly

import ferrum.metrics as metrics_mod
from ferrum.serde import to_json
from ferrum.types import EngineConfig
from runtime.telemetry import PHASES, EngineTelemetry

SPEC = (Path(__file__).parent / "spec" / "metrics.rs").read_text()
F32_MAX = 3.4028234663852886e38
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")


# -- the Rust types ---------------------------------------------------------------------------------

def parse_type(text: str) -> tuple:
    """A Rust type as a tree: ("Option", t), ("Vec", t), ("Array", t, n), ("HashMap", k, v), (name,)."""
    text = text.strip().removeprefix("crate::").removeprefix("serde_json::")
    if text.startswith("["):
        inner, n = text[1:-1].rsplit(";", 1)
        return ("Array", parse_type(inner), int(n))
    match = re.fullmatch(r"(\w+)<(.*)>", text)
    if not match:
        return (text,)
    name, args, depth, parts, start = match.group(1), match.group(2), 0, [], 0
    for i, ch in enumerate(args):
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "," and depth == 0:
            parts.append(args[start:i])
            start = i + 1
    parts.append(args[start:])
    if name == "DateTime":
        return ("DateTime",)
    return (name, *(parse_type(p) for p in parts))


def rust_structs(text: str) -> dict[str, list[tuple[str, tuple]]]:
    structs = {}
    for match in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.DOTALL):
        lines = (line.split("//")[0].strip() for line in match.group(2).splitlines())
        fields = [re.fullmatch(r"pub (\w+): (.*),", line) for line in lines]
        structs[match.group(1)] = [(f.group(1), parse_type(f.group(2))) for f in fields if f]
    return structs


def rust_enums(text: str) -> dict[str, list[str]]:
    return {m.group(1): re.findall(r"^\s*(\w+),", m.group(2), re.MULTILINE)
            for m in re.finditer(r"pub enum (\w+) \{(.*?)\}", text, re.DOTALL)}


STRUCTS, ENUMS = rust_structs(SPEC), rust_enums(SPEC)
UNSIGNED = {"usize": 2**64 - 1, "u64": 2**64 - 1, "u32": 2**32 - 1}
STRINGS = {"String", "ModelId", "RequestId", "ClientId", "Device"}


def chrono_rfc3339(value: datetime) -> str:
    """A UTC datetime as chrono's serde writes it (fraction: none, 3, 6 or 9 digits)."""
    text = f"{value.year:04d}-" + value.strftime("%m-%dT%H:%M:%S")
    micro = value.microsecond
    if micro:
        text += f".{micro // 1000:03d}" if micro % 1000 == 0 else f".{micro:06d}"
    return text + "Z"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
engine_configs = st.builds(EngineConfig, gpu_memory_utilization=st.floats(0, 1), max_model_len=st.none() | st.integers(1, 2**20),
                           kv_cache_tokens=st.none() | st.integers(1, 2**30), seed=st.none() | st.integers(0, 2**32))


def rust_json(rtype: tuple) -> st.SearchStrategy:
    """JSON values of a Rust type as serde_json would write them."""
    head = rtype[0]
    if head == "Option":
        return st.none() | rust_json(rtype[1])
    if head == "Vec":
        return st.lists(rust_json(rtype[1]), max_size=3)
    if head == "Array":
        return st.lists(rust_json(rtype[1]), min_size=rtype[2], max_size=rtype[2])
    if head == "HashMap":
        return st.dictionaries(st.text(max_size=6), rust_json(rtype[2]), max_size=3)
    if head == "bool":
        return st.booleans()
    if head in UNSIGNED:
        return st.integers(0, UNSIGNED[head])
    if head == "f32":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    if head == "f64":
        return st.floats(allow_nan=False, allow_infinity=False)
    if head in STRINGS:
        return st.text(max_size=8)
    if head == "DateTime":
        return st.datetimes(timezones=st.just(UTC)).map(chrono_rfc3339)
    if head == "Value":
        return json_values
    if head in ENUMS:
        return st.sampled_from(ENUMS[head])
    if head == "EngineConfig":  # Ferrum's own type (the Rust one is not in the spec)
        return engine_configs.map(to_json)
    if head == "ModelConfig":  # a draft-model description, kept as JSON
        return st.dictionaries(st.text(max_size=4), json_values, max_size=3)
    if head in STRUCTS:
        return st.fixed_dictionaries({name: rust_json(t) for name, t in STRUCTS[head]})
    raise AssertionError(f"no strategy for Rust type {rtype}")


def conforms(rtype: tuple, value: Any, where: str) -> None:
    """Assert that ``value`` (parsed JSON) is something serde would accept for ``rtype``."""
    head = rtype[0]
    if head == "Option":
        if value is not None:
            conforms(rtype[1], value, where)
    elif head in ("Vec", "Array"):
        assert isinstance(value, list), where
        assert head == "Vec" or len(value) == rtype[2], where
        for i, item in enumerate(value):
            conforms(rtype[1], item, f"{where}[{i}]")
    elif head == "HashMap":
        assert isinstance(value, dict), where
        for key, item in value.items():
            conforms(rtype[2], item, f"{where}.{key}")
    elif head == "bool":
        assert isinstance(value, bool), where
    elif head in UNSIGNED:
        assert isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UNSIGNED[head], (where, value)
    elif head in ("f32", "f64"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (where, value)
        assert math.isfinite(value) and (head == "f64" or abs(value) <= F32_MAX), (where, value)
    elif head in STRINGS:
        assert isinstance(value, str), where
    elif head == "DateTime":
        assert isinstance(value, str) and RFC3339.match(value), (where, value)
    elif head in ENUMS:
        assert value in ENUMS[head], (where, value)
    elif head in STRUCTS:
        assert isinstance(value, dict) and list(value) == [n for n, _ in STRUCTS[head]], (where, value)
        for name, t in STRUCTS[head]:
            conforms(t, value[name], f"{where}.{name}")


# -- JSON back into the Python types ---------------------------------------------------------------

def from_json(tp: Any, value: Any) -> Any:
    """Decode parsed JSON into Python type ``tp``, refusing anything that does not fit exactly."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            assert type(None) in args
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return from_json(inner, value)
    if origin is list:
        assert isinstance(value, list)
        return [from_json(args[0], v) for v in value]
    if origin is dict:
        assert isinstance(value, dict)
        return {k: from_json(args[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        assert isinstance(value, dict) and sorted(value) == sorted(names), (tp.__name__, value)
        return tp(**{n: from_json(hints[n], value[n]) for n in names})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is datetime:
        assert isinstance(value, str)
        return datetime.fromisoformat(value)
    if tp is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value)
    if tp is int:
        assert isinstance(value, int) and not isinstance(value, bool)
        return value
    assert isinstance(value, tp), (tp, value)
    return value


def instants(rtype: tuple, value: Any) -> Any:
    """``value`` with its DateTime strings parsed, so equal instants compare equal however written."""
    head = rtype[0]
    if value is None:
        return None
    if head == "DateTime":
        return datetime.fromisoformat(value)
    if head == "Option":
        return instants(rtype[1], value)
    if head in ("Vec", "Array"):
        return [instants(rtype[1], v) for v in value]
    if head == "HashMap":
        return {k: instants(rtype[2], v) for k, v in value.items()}
    if head in STRUCTS:
        return {n: instants(t, value[n]) for n, t in STRUCTS[head]}
    return value


def test_every_metrics_type_is_a_spec_struct_or_enum():
    python_types = {name for name, obj in vars(metrics_mod).items()
                    if isinstance(obj, type) and obj.__module__ == metrics_mod.__name__}
    assert python_types == set(STRUCTS) | set(ENUMS)


@pytest.mark.parametrize("name", sorted(STRUCTS))
@costly(ci=10, deep=1_000)
@given(data=st.data())
def test_rust_json_round_trips_through_the_python_type(name, data):
    rust = data.draw(rust_json((name,)))
    wire = json.loads(json.dumps(rust))
    value = from_json(getattr(metrics_mod, name), wire)
    back = json.loads(json.dumps(to_json(value), allow_nan=False))
    conforms((name,), back, name)
    assert list(back) == [n for n, _ in STRUCTS[name]]  # the Rust field names, in the Rust order
    assert instants((name,), back) == instants((name,), wire)


# -- telemetry over generated event histories ------------------------------------------------------

class Clock:
    """Stands in for the ``time`` module inside runtime.telemetry."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.cpu = 0.0

    def monotonic(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


RIDS = [f"r{i}" for i in range(5)]
durations = st.one_of(st.just(0.0), st.floats(0.0, 1e7), st.sampled_from([5e-324, 1e-300, 1e-9]))
events = st.one_of(
    st.tuples(st.just("wait"), st.one_of(st.just(0.0), st.floats(1e-9, 1e5)), st.floats(0, 1)),
    st.tuples(st.just("arrival"), st.sampled_from(RIDS)),
    st.tuples(st.just("admitted"), st.sampled_from(RIDS)),
    st.tuples(st.just("tokens"), st.sampled_from(RIDS), st.integers(-1, 8)),
    st.tuples(st.just("finish"), st.sampled_from(RIDS), st.sampled_from(["completed", "failed", "cancelled"]),
              st.integers(0, 2**20), st.integers(0, 2**20), st.integers(0, 2**20), st.booleans()),
    st.tuples(st.just("step"), st.integers(0, 64), st.integers(0, 4096), durations, st.integers(0, 64)),
    st.tuples(st.just("phase"), st.sampled_from(PHASES), durations),
    st.tuples(st.just("rejected")),
    st.tuples(st.just("preempted")),
)


class Oracle:
    """The events as recorded, with their times, and the definitions the aggregates must meet."""

    def __init__(self, clock: Clock, window: float) -> None:
        self.clock, self.window, self.started = clock, window, clock.now
        self.live: dict[str, dict[str, float | None]] = {}
        self.finished: list[tuple[float, str, float, float | None, float, float, int]] = []
        self.itl: list[float] = []
        self.tokens: list[tuple[float, int]] = []
        self.steps: list[tuple[float, int, int, float, int]] = []
        self.phase = dict.fromkeys(PHASES, 0.0)
        self.counts = dict.fromkeys(["submitted", "completed", "failed", "cancelled", "rejected", "preempted"], 0)

    def apply(self, t: EngineTelemetry, event: tuple) -> None:
        kind, now = event[0], self.clock.now
        if kind == "wait":
            self.clock.now += event[1]
            self.clock.cpu += event[1] * event[2] * 2  # up to two busy cores
        elif kind == "arrival":
            self.counts["submitted"] += 1
            self.live[event[1]] = {"arrived": now, "admitted": None, "first": None, "last": None}
            t.on_arrival(event[1])
        elif kind == "admitted":
            live = self.live.get(event[1])
            if live is not None and live["admitted"] is None:
                live["admitted"] = now
            t.on_admitted(event[1])
        elif kind == "tokens":
            _, rid, n = event
            live = self.live.get(rid)
            if live is not None and n > 0:
                if live["first"] is None:
                    live["first"] = now
                elif live["last"] is not None:
                    self.itl += [(now - live["last"]) / n] * n
                live["last"] = now
                self.tokens.append((now, n))
            t.on_tokens(rid, n)
        elif kind == "finish":
            _, rid, status, prompt, output, chars, error = event
            live = self.live.pop(rid, None) or {"arrived": now, "admitted": None, "first": None}
            admitted = live["admitted"] if live["admitted"] is not None else now
            ttft = None if live["first"] is None else live["first"] - live["arrived"]
            self.counts[status] += 1
            self.finished.append((now, status, now - live["arrived"], ttft, admitted - live["arrived"],
                                  now - admitted, chars))
            t.on_finish(rid, status, prompt, output, chars, ValueError("boom") if error else None)
        elif kind == "step":
            self.steps.append((now, *event[1:]))
            t.on_step(*event[1:])
        elif kind == "phase":
            self.phase[event[1]] += event[2]
            t.add_phase_time(event[1], event[2])
        else:
            self.counts[kind] += 1
            t.on_rejected() if kind == "rejected" else t.on_preempted()

    def in_window(self, at: float) -> bool:
        return at > self.clock.now - self.window

    @property
    def span(self) -> float:
        return min(self.window, self.clock.now - self.started)

    def rate(self, count: float) -> float:
        return count / self.span if self.span > 0 else 0.0


def within(value: float, samples: list[float]) -> bool:
    return (min(samples) <= value <= max(samples)) if samples else value == 0.0


def ordered(*values: float) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


@costly(ci=60, deep=20_000)
@given(st.lists(events, max_size=40), st.sampled_from([1.0, 60.0]))
def test_telemetry_aggregates_match_the_events(history, window):
    clock = Clock()
    with mock.patch("runtime.telemetry.time", clock):
        t = EngineTelemetry(window_s=window)
        o = Oracle(clock, window)
        for event in history:
            o.apply(t, event)
        latency, throughput, batching = t.latency_metrics(), t.throughput_metrics(), t.batching_metrics()
        sched = t.scheduler_stats(waiting=3, running=2, preempted=o.counts["preempted"], queue_capacity=8)
        engine = t.engine_metrics(queue_length=3)
    for name, snapshot in [("LatencyMetrics", latency), ("ThroughputMetrics", throughput),
                           ("BatchingMetrics", batching), ("SchedulerStats", sched), ("EngineMetrics", engine)]:
        conforms((name,), json.loads(json.dumps(to_json(snapshot), allow_nan=False)), name)

    done = [f for f in o.finished if f[1] == "completed"]
    window_done = [f for f in done if o.in_window(f[0])]
    window_steps = [s for s in o.steps if o.in_window(s[0])]
    lat = [f[2] * 1000 for f in done]
    assert ordered(latency.p50_latency_ms, latency.p90_latency_ms, latency.p95_latency_ms,
                   latency.p99_latency_ms, latency.p999_latency_ms)
    assert within(latency.p50_latency_ms, lat) and within(latency.p999_latency_ms, lat)
    assert within(latency.avg_latency_ms, lat)
    assert within(latency.avg_ttft_ms, [f[3] * 1000 for f in done if f[3] is not None])
    assert within(latency.avg_inter_token_latency_ms, [g * 1000 for g in o.itl])

    assert throughput.requests_per_second == o.rate(len(window_done))
    assert throughput.tokens_per_second == o.rate(sum(n for at, n in o.tokens if o.in_window(at)))
    assert throughput.characters_per_second == o.rate(sum(f[6] for f in window_done))
    assert throughput.batches_per_second == o.rate(len(window_steps))
    peaks = [n / s for _, _, n, s, _ in o.steps if s > 0]
    assert throughput.peak_tokens_per_second == (min(max(peaks), 1.7976931348623157e308) if peaks else 0.0)

    assert within(batching.avg_batch_size, [s[1] for s in window_steps])
    assert 0.0 <= batching.batch_utilization <= 1.0
    assert batching.batches_created == batching.batches_completed == len(o.steps)
    assert within(batching.avg_batch_time_ms, [s[3] * 1000 for s in window_steps])

    assert (sched.completed_requests, sched.failed_requests, sched.cancelled_requests) == (
        o.counts["completed"], o.counts["failed"], o.counts["cancelled"])
    assert within(sched.avg_wait_time_ms, [f[4] * 1000 for f in o.finished])
    assert within(sched.avg_execution_time_ms, [f[5] * 1000 for f in done])
    assert sched.throughput_rps == o.rate(len(window_done)) and sched.queue_utilization == 3 / 8 * 100

    ended = o.counts["completed"] + o.counts["failed"] + o.counts["cancelled"]
    assert (engine.total_requests, engine.successful_requests, engine.failed_requests) == (
        o.counts["submitted"], o.counts["completed"], o.counts["failed"])
    assert engine.error_stats.error_rate == (o.counts["failed"] / ended if ended else 0.0)
    assert engine.error_stats.total_errors == o.counts["failed"]
    assert sum(engine.error_stats.errors_by_type.values()) == sum(1 for e in history if e[0] == "finish" and e[-1])
    offered = o.counts["submitted"] + o.counts["rejected"]
    assert engine.queue_metrics.queue_rejection_rate == (o.counts["rejected"] / offered if offered else 0.0)
    assert within(engine.queue_metrics.avg_queue_wait_time_ms, [f[4] * 1000 for f in o.finished if o.in_window(f[0])])
    assert engine.queue_metrics.queue_throughput_rps == o.rate(sum(1 for f in o.finished if o.in_window(f[0])))
    assert 0.0 <= engine.resource_utilization.cpu_utilization <= 100.0
    assert 0.0 <= engine.resource_utilization.memory_utilization <= 100.0
    breakdown = engine.performance_breakdown
    for phase in PHASES:
        assert math.isclose(getattr(breakdown, f"{phase}_time_ms"), o.phase[phase] * 1000, rel_tol=1e-12)
