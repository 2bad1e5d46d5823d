"""The Python contracts mirror the Rust spec: same types, same JSON field names, same methods."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

import ferrum.engine as engine_mod
import ferrum.metrics as metrics_mod
from ferrum.serde import to_json, utc_now

SPEC = Path(__file__).parent / "spec"


def rust_structs(text: str) -> dict[str, list[str]]:
    structs = {}
    for match in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        structs[match.group(1)] = re.findall(r"^\s*pub (\w+):", match.group(2), re.M)
    return structs


def rust_traits(text: str) -> dict[str, list[str]]:
    traits = {}
    for match in re.finditer(r"pub trait (\w+)[^{]*\{(.*?)\n\}", text, re.S):
        traits[match.group(1)] = re.findall(r"fn (\w+)", match.group(2))
    return traits


STRUCTS = rust_structs((SPEC / "metrics.rs").read_text())


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_metrics_struct_fields_match(name):
    cls = getattr(metrics_mod, name)
    assert [f.name for f in dataclasses.fields(cls)] == STRUCTS[name]


def test_enums_match():
    text = (SPEC / "metrics.rs").read_text()
    for enum_name in ("HealthStatusType", "TrendDirection"):
        body = re.search(rf"pub enum {enum_name} \{{(.*?)\}}", text, re.S).group(1)
        variants = re.findall(r"^\s*(\w+),", body, re.M)
        assert [v.value for v in getattr(metrics_mod, enum_name)] == variants


@pytest.mark.parametrize("trait, methods", sorted(rust_traits((SPEC / "engine.rs").read_text()).items()))
def test_engine_traits_match(trait, methods):
    cls = getattr(engine_mod, trait)
    assert inspect.isabstract(cls) or trait == "InferenceEngine"
    for method in methods:
        assert callable(getattr(cls, method, None)), f"{trait}.{method}"


def test_async_methods_are_async():
    for cls, name in [(engine_mod.InferenceEngine, "status"), (engine_mod.LlmInferenceEngine, "infer"),
                      (engine_mod.LlmInferenceEngine, "infer_stream"),
                      (engine_mod.EmbedEngine, "embed_text"), (engine_mod.TtsEngine, "synthesize_speech"),
                      (engine_mod.AdvancedInferenceEngine, "warmup")]:
        assert inspect.iscoroutinefunction(getattr(cls, name))
    assert not inspect.iscoroutinefunction(engine_mod.InferenceEngine.metrics)


def test_json_is_serde_shaped():
    health = metrics_mod.HealthStatus.from_components(metrics_mod.ComponentStatus(
        *[metrics_mod.ComponentHealth.healthy(c) for c in ("s", "m", "t", "k", "mem", "b")]))
    data = json.loads(json.dumps(to_json(health)))
    assert data["status"] == "Healthy"
    assert set(data["component_status"]) == {"scheduler", "model_executor", "tokenizer", "kv_cache",
                                             "memory_manager", "backend"}
    assert data["last_check"].endswith("Z")
    metrics = to_json(metrics_mod.EngineMetrics(avg_request_latency_ms=float("nan")))
    assert metrics["avg_request_latency_ms"] is None  # JSON never carries NaN
    assert to_json(utc_now()).endswith("Z")
