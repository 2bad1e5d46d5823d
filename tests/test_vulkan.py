"""The vulkan target on Mesa's lavapipe (a CPU Vulkan driver): artifacts compiled with TVM's WebGPU
codegen, run by Ferrum's WebGPU plugin over wgpu-native, give the CPU artifact's tokens.

lavapipe is slow (SmolLM2 decodes at seconds per token on two cores), so the engine tests use a
tiny random Llama and SmolLM2 generates a few tokens of a short prompt. CI installs Debian's
``mesa-vulkan-drivers``; without a Vulkan loader on the machine these tests are skipped.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ferrum.errors import ArtifactError
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.artifact import LlmArtifact
from runtime.batch_engine import ContinuousBatchEngine
from runtime.model_runner import KVCacheConfig, ModelRunner

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ctypes.util.find_library("vulkan") is None,
                       reason="no Vulkan loader (apt-get install mesa-vulkan-drivers)"),
]
PROMPTS = ["the quick brown fox", "hello world, this is", "numbers 0123 and café"]


def run(coro):
    return asyncio.run(coro)


def compile_for(model: str, target: str, root: Path, quant: str = "q0f32", binding_limit: int | None = None) -> Path:
    from compile.compile_model import compile_model

    return compile_model(model, target, quant, output_root=root, skip_existing=True, binding_limit=binding_limit)


@pytest.fixture(scope="module")
def smollm2_vulkan() -> Path:
    return compile_for(None, "vulkan", ROOT / "artifacts")


@pytest.fixture(scope="module")
def minilm_vulkan() -> Path:
    return compile_for("all-minilm-l6-v2", "vulkan", ROOT / "artifacts")


def open_engine(artifact: Path, **kwargs) -> ContinuousBatchEngine:
    return ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_model_len=256, **kwargs))


def greedy(engine: ContinuousBatchEngine, prompts: list[str], max_tokens: int) -> list[list[int]]:
    async def go():
        return await asyncio.gather(*(engine.infer(InferenceRequest(
            prompt=p, sampling_params=SamplingParams.greedy(max_tokens=max_tokens, ignore_eos=True))) for p in prompts))

    return [r.tokens for r in run(go())]


def prefill_logits(artifact: Path, tokens: list[int]) -> np.ndarray:
    runner = ModelRunner(LlmArtifact.open(artifact))
    runner.create_kv_cache(KVCacheConfig(max_batch_size=1, max_total_tokens=128, prefill_chunk_size=64, page_size=16))
    runner.add_sequence(0)
    return runner.prefill([0], [tokens])[0]


def assert_same_greedy(reference: Path, candidate: Path, max_tokens: int, logits_rel: float | None = None) -> None:
    """``candidate``'s greedy tokens on PROMPTS equal ``reference``'s; with ``logits_rel``, its
    prefill logits of the first prompt too, within that fraction of the largest logit."""
    ref, cand = open_engine(reference), open_engine(candidate)
    try:
        assert greedy(cand, PROMPTS, max_tokens) == greedy(ref, PROMPTS, max_tokens)
        tokens = ref.tokenizer.encode(PROMPTS[0])
    finally:
        run(ref.shutdown())
        run(cand.shutdown())
    if logits_rel is not None:
        a, b = prefill_logits(reference, tokens), prefill_logits(candidate, tokens)
        assert np.abs(a - b).max() <= logits_rel * max(1.0, np.abs(a).max())


def test_manifest_records_the_plugin_and_what_the_adapter_needs(tiny_vulkan):
    manifest = json.loads((tiny_vulkan / "manifest.json").read_text())
    assert manifest["target"]["kind"] == "vulkan" and manifest["target"]["device_type"] == "webgpu"
    assert list(manifest["kernels"].values()) == ["kernels/ferrum_webgpu.so"]
    limits = manifest["target"]["requirements"]["limits"]
    assert 4 <= limits["max_storage_buffers_per_shader_stage"] <= 32
    assert limits["max_compute_invocations_per_workgroup"] >= 64


def test_tiny_llama_tokens_and_logits_equal_the_cpu_artifact(tiny_vulkan, tiny_artifact):
    assert_same_greedy(tiny_artifact, tiny_vulkan, 48, logits_rel=1e-4)


def test_tiny_llama_q0f16_on_vulkan_gives_the_cpu_float32_tokens(tiny_llama, tiny_artifact, tmp_path):
    """float16 weights and activations (WGSL ``enable f16``, lavapipe has ``shader-f16``). Over 16
    tokens: further on, the random tiny model's near-ties between two tokens (a margin inside float16's
    rounding) may go either way, as they did after an unrelated change to the CPU schedules."""
    f16 = compile_for(str(tiny_llama), "vulkan", tmp_path, "q0f16")
    assert json.loads((f16 / "manifest.json").read_text())["target"]["requirements"]["features"] == ["shader-f16"]
    assert_same_greedy(tiny_artifact, f16, 16)


INT4_LIMIT = 4 << 10  # under every tiny-Llama int4 gate/up (8 KiB of words), embedding and LM head (80 KiB)


def largest_tensor(artifact: Path) -> int:
    shards = json.loads((artifact / "weights" / "tensor-cache.json").read_text())["records"]
    return max(r["nbytes"] for shard in shards for r in shard["records"])


@pytest.fixture(scope="module")
def q4f32_split_vulkan(tiny_llama, tmp_path_factory) -> Path:
    return compile_for(str(tiny_llama), "vulkan", tmp_path_factory.mktemp("q4-vk"), "q4f32", binding_limit=INT4_LIMIT)


def test_int4_split_under_a_tiny_binding_limit_gives_the_cpu_int4_tokens(q4f32_split_vulkan, tiny_llama, tmp_path):
    """q4f32 (int4 Q4_1 groups of 32, float32 activations) with every parameter split under 4 KiB:
    the embedding in 20 vocabulary shards, the LM head and gate/up by output rows (int4 words,
    scales and minimums cut alike). The GPU kernels read the packed words. Its greedy tokens equal
    the CPU q4f32 artifact's (unsplit); that one keeps its LM head in int8 (Q8_0) where the GPU's
    is float32, so logits differ by that rounding, within the bound below. Over 16 tokens."""
    manifest = json.loads((q4f32_split_vulkan / "manifest.json").read_text())
    assert manifest["target"]["requirements"]["limits"]["max_storage_buffer_binding_size"] == INT4_LIMIT
    assert manifest["target"]["requirements"]["features"] == []
    names = manifest["extra"]["param_names"]
    assert {"embed_tokens.shards.19.weight", "lm_head.parts.19.weight",
            "layers.0.mlp.gate_up_proj.parts.1.q_weight", "layers.0.self_attn.o_proj.q_weight"} <= set(names)
    cpu_art = compile_for(str(tiny_llama), "llvm", tmp_path, "q4f32")
    assert largest_tensor(q4f32_split_vulkan) <= INT4_LIMIT < largest_tensor(cpu_art)
    from compile.restore_weights import restore_weights

    moved = tmp_path / "moved"  # the manifest's extra.param_splits cuts regenerated weights alike (hashes checked)
    shutil.copytree(q4f32_split_vulkan, moved)
    restore_weights(moved, str(tiny_llama))
    assert_same_greedy(cpu_art, q4f32_split_vulkan, 16, logits_rel=2e-2)


def test_q4f16_on_vulkan_gives_the_q4f32_tokens(q4f32_split_vulkan, tiny_llama, tmp_path):
    """The same int4 weights with float16 activations (``shader-f16``, which lavapipe has; float32
    accumulation): the q4f32 artifact's greedy tokens over 16, as q0f16 against q0f32."""
    f16 = compile_for(str(tiny_llama), "vulkan", tmp_path, "q4f16")
    assert json.loads((f16 / "manifest.json").read_text())["target"]["requirements"]["features"] == ["shader-f16"]
    assert_same_greedy(q4f32_split_vulkan, f16, 16)


def test_batch_engine_on_vulkan_batches_preempts_and_cancels(tiny_vulkan):
    engine = open_engine(tiny_vulkan, kv_cache_tokens=128, max_num_seqs=6, max_num_batched_tokens=64,
                         enable_prefix_caching=False)
    try:
        prompts = [f"{p} {i}" * (1 + i % 3) for i, p in enumerate(PROMPTS * 2)]
        alone = [greedy(engine, [p], 24)[0] for p in prompts]
        assert greedy(engine, prompts, 24) == alone  # six sequences of up to 44 tokens in 128: preempted
        assert engine.scheduler.preemptions > 0
        pages = engine.scheduler.pages
        assert pages.free_pages == pages.total_pages == engine.runner.available_pages()

        async def read_two_then_close() -> None:
            stream = await engine.infer_stream(InferenceRequest(
                prompt=prompts[0], sampling_params=SamplingParams.greedy(max_tokens=100, ignore_eos=True)))
            await stream.__anext__()
            await stream.__anext__()
            assert engine.scheduler.pages.free_pages < pages.total_pages
            await stream.aclose()

        run(read_two_then_close())
        deadline = time.monotonic() + 5
        while engine.scheduler.pages.free_pages != pages.total_pages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.runner.available_pages() == engine.scheduler.pages.free_pages == pages.total_pages
        device = engine.device_info()  # what /v1/status reports
        assert device["type"] == "webgpu" and device["backend"] == "vulkan" and device["name"]
        assert device["memory_allocated_bytes"] >= engine.runner.kv_bytes_per_token() * 128
        assert run(engine.status()).memory_usage.gpu_memory_bytes == device["memory_allocated_bytes"]
    finally:
        run(engine.shutdown())


def test_an_adapter_lacking_a_required_limit_is_refused_by_name(tiny_vulkan, tmp_path):
    folder = tmp_path / "needs-more"
    shutil.copytree(tiny_vulkan, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["target"]["requirements"]["limits"]["max_storage_buffers_per_shader_stage"] = 1000
    manifest["target"]["requirements"]["features"] = ["shader-f64"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"shader-f64, max_storage_buffers_per_shader_stage \d+ < 1000"):
        ModelRunner(LlmArtifact.open(folder), "vulkan")


def test_a_cuda_device_is_refused_for_a_vulkan_artifact(tiny_vulkan):
    with pytest.raises(ArtifactError, match="compiled for vulkan and cannot run on 'cuda'"):
        ModelRunner(LlmArtifact.open(tiny_vulkan), "cuda")


SCRIPT = r"""
import asyncio, json, sys
import tvm
from tvm.base import _LOADED_LIBS
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.batch_engine import ContinuousBatchEngine

engine = ContinuousBatchEngine(EngineConfig(artifact_path=sys.argv[1], device="vulkan", max_model_len=256))
request = InferenceRequest(prompt="hello world",
                           sampling_params=SamplingParams.greedy(max_tokens=8, ignore_eos=True))
tokens = asyncio.run(engine.infer(request)).tokens
print(json.dumps({"runtime_only": tvm.base._RUNTIME_ONLY, "libs": sorted(_LOADED_LIBS), "tokens": tokens,
                  "stats": json.loads(tvm.get_global_func("ferrum.webgpu.stats")()),
                  "compiler": sorted(m for m in sys.modules if m.startswith(("tvm.relax", "tvm.s_tir", "compile")))}))
"""


def run_script(artifact: Path, **env: str) -> dict:
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(artifact)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_runtime_only_tvm_runs_the_vulkan_artifact(tiny_vulkan, tiny_artifact):
    report = run_script(tiny_vulkan)
    assert report["runtime_only"] is True and "tvm_compiler" not in report["libs"] and report["compiler"] == []
    stats = report["stats"]  # decode steps reuse their bind groups
    assert stats["group_hits"] > stats["groups_created"] > 0
    assert stats["group_hits"] + stats["groups_created"] == stats["dispatches"]
    cpu = open_engine(tiny_artifact)
    try:
        want = greedy(cpu, ["hello world"], 8)[0]
    finally:
        run(cpu.shutdown())
    assert report["tokens"] == want
    uncached = run_script(tiny_vulkan, FERRUM_WEBGPU_GROUP_CACHE="0")  # a bind group per dispatch
    assert uncached["tokens"] == want
    assert uncached["stats"]["groups_created"] == uncached["stats"]["dispatches"] > 0
    assert uncached["stats"]["groups_cached"] == uncached["stats"]["group_hits"] == 0


def test_smollm2_on_vulkan_answers_like_the_cpu_artifact(smollm2_vulkan, smollm2_artifact):
    """Greedy tokens of the raw question (7 tokens, so the prompt too runs the GEMV kernels):
    lavapipe takes seconds per SmolLM2 step."""
    cpu, vk = open_engine(smollm2_artifact), open_engine(smollm2_vulkan, device="vulkan")
    try:
        prompt = ["What is the capital of France?"]
        want = greedy(cpu, prompt, 8)
        assert greedy(vk, prompt, 8) == want
    finally:
        run(cpu.shutdown())
        run(vk.shutdown())


def test_minilm_vectors_on_vulkan_are_the_cpu_ones(minilm_vulkan, minilm_artifact):
    from runtime.embedding_engine import EmbeddingEngine

    texts = ["A man is eating food.", "The new movie is so great!", "a",
             "Quantum entanglement links the states of two particles."]
    vectors = []
    for artifact in (minilm_artifact, minilm_vulkan):
        engine = EmbeddingEngine(EngineConfig(artifact_path=str(artifact), max_num_seqs=8))
        try:
            vectors.append(np.array([run(engine.embed_text(t)) for t in texts]))
        finally:
            run(engine.shutdown())
    cpu, vk = vectors
    cosines = (cpu * vk).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(vk, axis=1)
    assert cosines.min() >= 0.9999, cosines


def test_serve_device_vulkan_answers_and_reports_the_adapter(tiny_vulkan):
    from server_harness import ServeProcess, request

    server = ServeProcess([str(tiny_vulkan)], "--device", "vulkan", "--max-model-len", "256", "--kv-cache-tokens", "512")
    try:
        body = {"model": tiny_vulkan.name, "prompt": "hello world", "max_tokens": 4, "temperature": 0}
        status, _, reply = run(request("POST", server.url + "/v1/completions", json_body=body))
        assert status == 200 and json.loads(reply)["usage"]["completion_tokens"] == 4
        status, _, reply = run(request("GET", server.url + "/v1/status"))
        assert status == 200
        device = json.loads(reply)["models"][tiny_vulkan.name]["device"]
        assert device["type"] == "webgpu" and device["backend"] == "vulkan" and device["memory_allocated_bytes"] > 0
    finally:
        assert server.terminate() == 0


def test_a_buffer_freed_and_allocated_again_at_its_handle_gets_a_fresh_bind_group(tiny_vulkan, tmp_path):
    """The plugin caches bind groups by buffer handle. A freed buffer's handle comes back for the
    next allocation of its size; if its cached group survived the free, the kernel would write the
    freed buffer (kept alive by that group) and the new output would stay unwritten."""
    import tvm
    from tvm.script import tirx as T

    from runtime.artifact import resolve_device

    device = resolve_device(LlmArtifact.open(tiny_vulkan).manifest)  # loads the artifact's plugin

    @T.prim_func
    def add_one(a: T.Buffer((256,), "float32"), b: T.Buffer((256,), "float32")):
        T.func_attr({"global_symbol": "add_one", "tir.noalias": True})
        for i in T.thread_binding(4, thread="blockIdx.x"):
            for j in T.thread_binding(64, thread="threadIdx.x"):
                b[i * 64 + j] = a[i * 64 + j] + T.float32(1)

    path = tmp_path / "add_one.so"
    tvm.compile(add_one, target=tvm.target.Target("webgpu", host="llvm")).export_library(str(path))
    kernel = tvm.runtime.load_module(str(path))["add_one"]
    stats = tvm.get_global_func("ferrum.webgpu.stats")
    before = json.loads(stats())
    rng = np.random.default_rng(0)
    a = tvm.runtime.empty((256,), "float32", device)
    freed: set[int] = set()
    reused = 0
    for _ in range(12):
        x = rng.standard_normal(256).astype(np.float32)
        a.copyfrom(x)
        b = tvm.runtime.empty((256,), "float32", device)
        reused += b.data_ptr() in freed
        kernel(a, b)
        kernel(a, b)  # the same buffers again: the cached group
        np.testing.assert_array_equal(b.numpy(), x + 1)
        freed.add(b.data_ptr())
        del b
    after = json.loads(stats())
    assert reused >= 3, "no freed handle came back: this test would not see a stale group"
    assert after["group_hits"] - before["group_hits"] >= 12
    assert after["groups_evicted"] - before["groups_evicted"] >= 11
