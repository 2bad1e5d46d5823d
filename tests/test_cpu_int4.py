"""q4f32, the CPU int4 scheme: its packing and Ferrum's CPU kernels (fast) and its compiled models (slow).

q4f32 keeps a GGUF's Q4_1 linear weights and Q8_0 LM head exactly, so its SmolLM2 artifact must
give the very greedy tokens of q0f32 (which dequantizes the same blocks to float32): the kernels
quantize activations to two int8 terms (~15 bits), so only rounding far below float16's differs.
The kernel tests load the kernels as a shared library next to TVM's runtime (no model compile).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from checks import reference_llama as ref
import compile.builders.decoder as decoder_builder
from compile.compile_model import compile_model
from compile.kernels.cpu_ops import CPU_KERNEL_FEATURES, build_cpu_shared
from compile.quantize import (
    deinterleave_q8_rows,
    deinterleave_rows,
    dequantize_q4,
    dequantize_q8,
    interleave_q8_rows,
    interleave_rows,
    quantize_q4,
    quantize_q8,
)
from ferrum.manifest import Manifest, host_cpu_flags
from ferrum.types import EngineConfig, InferenceRequest, SamplingParams
from runtime.artifact import LlmArtifact
from runtime.batch_engine import ContinuousBatchEngine
from runtime.model_runner import KVCacheConfig, ModelRunner

ROOT_ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PROMPTS = [
    "What is the capital of France?",
    "Tell me a short story about a robot who learns to paint.",
    "Explain in two sentences why the sky is blue.",
]


def test_int8_reproduces_gguf_q8_0_blocks():
    """A Q8_0 block (d, q in [-127, 127], max |q| = 127) dequantizes to q*d; re-quantizing gives back d and q."""
    rng = np.random.default_rng(5)
    d = rng.uniform(1e-4, 0.02, (5, 3)).astype(np.float16)
    q = rng.integers(-127, 128, (5, 3, 32))
    q[:, :, 7] = np.where(rng.random((5, 3)) < 0.5, 127, -127)  # ggml's d is max|w| / 127
    w = (q * d.astype(np.float32)[:, :, None]).reshape(5, 96).astype(np.float32)
    q8, scale = quantize_q8(w, 32)
    assert q8.dtype == np.int8 and np.array_equal(scale, d)
    assert np.array_equal(q8.reshape(5, 3, 32), q)
    assert np.array_equal(dequantize_q8(q8, scale, 32), w)


def test_int8_of_zero_block_is_zero():
    q8, scale = quantize_q8(np.zeros((2, 32), np.float32), 32)
    assert not q8.any() and not scale.astype(np.float32).any()


def test_interleaved_rows_put_sixteen_output_rows_in_one_vector():
    a = np.arange(32 * 5, dtype=np.uint32).reshape(32, 5)
    out = interleave_rows(a, 16)
    assert out.shape == (2, 5, 16)
    assert out[1, 3, 4] == a[16 + 4, 3]
    assert np.array_equal(out[0, 2], a[:16, 2])
    assert np.array_equal(deinterleave_rows(out), a)
    with pytest.raises(ValueError, match="cannot interleave 20 rows"):
        interleave_rows(np.zeros((20, 4)), 16)


def test_int8_vnni_rows_put_four_inputs_of_a_row_in_each_lane():
    q = np.arange(32 * 16, dtype=np.int64).reshape(32, 16).astype(np.int8)
    out = interleave_q8_rows(q, 16)
    assert out.shape == (2, 4, 64)
    # lane 5 of tile 1, group 1 (odd inputs 1,3,5,7 of the first 8), byte 2 -> input 5 of row 21
    assert out[1, 1, 5 * 4 + 2] == q[21, 5]
    assert list(out[0, 2, 0:4]) == list(q[0, [8, 10, 12, 14]])
    assert np.array_equal(deinterleave_q8_rows(out), q)


needs_kernel_cpu = pytest.mark.skipif(not set(CPU_KERNEL_FEATURES) <= host_cpu_flags(),
                                      reason=f"Ferrum's CPU kernels need {', '.join(CPU_KERNEL_FEATURES)}")


@pytest.fixture(scope="module")
def kernels():
    import tvm

    return tvm.runtime.load_module(str(build_cpu_shared()))


def _tensor(a: np.ndarray):
    import tvm

    return tvm.runtime.tensor(np.ascontiguousarray(a))


def _rmsnorm(x: np.ndarray, g: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * g


def _close(got, want: np.ndarray, rel: float = 2e-4) -> None:
    """Within ``rel`` of the largest output: the two-int8-term activations carry ~15 bits."""
    assert np.abs(got.numpy() - want).max() <= rel * np.abs(want).max()


@needs_kernel_cpu
@pytest.mark.parametrize("rows", [1, 3, 8, 13])
def test_cpu_int4_kernels_match_numpy(kernels, rows):
    """Every fused kernel against float64 numpy on the dequantized Q4_1/Q8_0 weights, for 1-13
    activation rows (GEMV chunks of 1..8 rows and the remainders)."""
    rng = np.random.default_rng(rows)
    k, n = 576, 960
    x = rng.standard_normal((rows, k)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, k).astype(np.float32)
    w = (0.05 * rng.standard_normal((n, k))).astype(np.float32)
    qw, qs, qm = quantize_q4(w, 32)
    wd = dequantize_q4(qw, qs, qm, 32).astype(np.float64)
    packed = [_tensor(interleave_rows(a, 16)) for a in (qw, qs.astype(np.float32), qm.astype(np.float32))]
    h = _rmsnorm(x, g)

    out = _tensor(np.zeros((rows, n), np.float32))
    kernels["ferrum_cpu_norm_linear_q4"](_tensor(x), _tensor(g), *packed, 1e-5, out)
    _close(out, h @ wd.T)

    res = rng.standard_normal((rows, n)).astype(np.float32)
    kernels["ferrum_cpu_linear_res_q4"](_tensor(x), *packed, _tensor(res), out)
    _close(out, x @ wd.T + res)

    half = _tensor(np.zeros((rows, n // 2), np.float32))
    kernels["ferrum_cpu_norm_gate_up_q4"](_tensor(x), _tensor(g), *packed, 1e-5, half)
    gate, up = np.split(h @ wd.T, 2, axis=1)
    _close(half, gate / (1 + np.exp(-gate)) * up)

    q8, s8 = quantize_q8(w, 32)
    kernels["ferrum_cpu_norm_logits_q8"](_tensor(x), _tensor(g), _tensor(interleave_q8_rows(q8, 16)),
                                          _tensor(interleave_rows(s8.astype(np.float32), 16)), 1e-5, out)
    _close(out, h @ dequantize_q8(q8, s8, 32).astype(np.float64).T)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax attention of q [h_q, d] over k, v [n, h_kv, d]; and its base-2 log-sum-exp per head."""
    group = q.shape[0] // k.shape[1]
    kk, vv = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = np.einsum("hd,nhd->hn", q.astype(np.float64), kk) * scale
    p = np.exp(s - s.max(1, keepdims=True))
    out = np.einsum("hn,nhd->hd", p / p.sum(1, keepdims=True), vv)
    return out, (s.max(1) + np.log(p.sum(1))) / np.log(2)


@needs_kernel_cpu
def test_cpu_decode_attention_over_pages_matches_numpy(kernels):
    """Two sequences (130 and 7 keys) in shuffled pages of 16: output and base-2 lse per query head."""
    rng = np.random.default_rng(3)
    h_q, h_kv, d, page = 6, 2, 32, 16
    lengths = [130, 7]
    pages_of = [list(range(9)), [9]]
    order = rng.permutation(10)  # physical page of each logical page
    pages = rng.standard_normal((10, 2, h_kv, page, d)).astype(np.float32)
    q = rng.standard_normal((2, h_q, d)).astype(np.float32)
    values = np.array([order[p] for ps in pages_of for p in ps], np.int32)
    indptr = np.array([0, 9, 10], np.int32)
    last = np.array([130 - 8 * 16, 7], np.int32)
    out = _tensor(np.zeros((2, h_q, d), np.float32))
    lse = _tensor(np.zeros((2, h_q), np.float32))
    zeros = _tensor(np.zeros(2, np.int32))
    kernels["ferrum_cpu_attention_decode_paged"](_tensor(q), _tensor(pages), _tensor(indptr), _tensor(values),
                                                 _tensor(last), zeros, zeros, out, lse, 0, 1.0, 1e4, d**-0.5)
    for b, n in enumerate(lengths):
        slots = [(order[pages_of[b][i // page]], i % page) for i in range(n)]
        k = np.stack([pages[p, 0, :, s] for p, s in slots])
        v = np.stack([pages[p, 1, :, s] for p, s in slots])
        want, want_lse = _attention(q[b], k, v, d**-0.5)
        assert np.abs(out.numpy()[b] - want).max() < 1e-5
        assert np.abs(lse.numpy()[b] - want_lse).max() < 1e-4


@needs_kernel_cpu
def test_cpu_prefill_attention_is_causal_per_sequence(kernels):
    """Two ragged sequences (37 and 5 new tokens): query i sees keys 0..i of its own sequence."""
    rng = np.random.default_rng(4)
    h_q, h_kv, d = 4, 2, 16
    lengths = [37, 5]
    n = sum(lengths)
    q, k, v = (rng.standard_normal((n, h, d)).astype(np.float32) for h in (h_q, h_kv, h_kv))
    indptr = np.array([0, 37, 42], np.int32)
    out = _tensor(np.zeros((n, h_q, d), np.float32))
    lse = _tensor(np.zeros((n, h_q), np.float32))
    zeros = _tensor(np.zeros(2, np.int32))
    kernels["ferrum_cpu_attention_prefill_ragged"](_tensor(q), _tensor(indptr), _tensor(k), _tensor(v), _tensor(indptr),
                                                   zeros, zeros, out, lse, 1, 0, 1.0, 1e4, d**-0.5)
    for b, start in enumerate(indptr[:-1]):
        for i in range(lengths[b]):
            row = start + i
            want, want_lse = _attention(q[row], k[start:row + 1], v[start:row + 1], d**-0.5)
            assert np.abs(out.numpy()[row] - want).max() < 1e-5
            assert np.abs(lse.numpy()[row] - want_lse).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("own_kernels", [True, False], ids=["ferrum-cpu-kernels", "tvm-kernels"])
def test_q4f32_kernels_match_reference(tmp_path, tiny_llama, monkeypatch, own_kernels):
    """The model computes with exactly the weights the packer wrote, through batch_verify and
    batch_decode: with Ferrum's CPU kernels (on a CPU that has their features) and with TVM's
    kernels over the same layout (what a CPU without them builds)."""
    if own_kernels and not set(CPU_KERNEL_FEATURES) <= host_cpu_flags():
        pytest.skip(f"Ferrum's CPU kernels need {', '.join(CPU_KERNEL_FEATURES)}")
    if not own_kernels:
        monkeypatch.setattr(decoder_builder, "host_cpu_flags", set)
    artifact = compile_model(str(tiny_llama), "llvm", "q4f32", output_root=tmp_path)
    features = Manifest.load(artifact).target.cpu_features
    assert ("avx512_vnni" in features) == own_kernels
    cfg, weights = ref.load_hf(tiny_llama)
    for name, w in weights.items():
        if w.ndim == 2 and name == "head":
            weights[name] = dequantize_q8(*quantize_q8(w.astype(np.float32), 32), 32).astype(np.float64)
        elif w.ndim == 2 and name != "embed":
            weights[name] = dequantize_q4(*quantize_q4(w.astype(np.float32), 32), 32).astype(np.float64)
    tokens = list(np.random.default_rng(2).integers(0, 300, size=300))  # > 2 chunks of CPU decode attention
    runner = ModelRunner(LlmArtifact.open(artifact))
    runner.create_kv_cache(KVCacheConfig(2, 1024, 512, 16))
    runner.add_sequence(0)
    compiled = runner.verify([0], [tokens])
    expected = ref.forward(cfg, weights, tokens)
    assert np.abs(compiled - expected).max() <= 1e-3
    assert (compiled.argmax(-1) == expected.argmax(-1)).all()
    # one token at a time: Ferrum's CPU decode attention (compile/model/cpu_attention.py), keys over 3 chunks
    runner.add_sequence(1)
    runner.prefill([1], [tokens[:4]])
    decoded = np.stack([runner.decode([1], [t])[0] for t in tokens[4:]])
    assert np.abs(decoded - expected[4:]).max() <= 1e-3


def _greedy(artifact, prompts: list[str], tokens: int) -> list[list[int]]:
    engine = ContinuousBatchEngine(EngineConfig(artifact_path=str(artifact), max_model_len=2048))
    try:
        out = []
        for text in prompts:
            prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": text}])
            params = SamplingParams.greedy(max_tokens=tokens)
            out.append(asyncio.run(engine.infer(InferenceRequest(prompt=prompt, sampling_params=params))).tokens)
        return out
    finally:
        asyncio.run(engine.shutdown())


@pytest.mark.slow
def test_q4f32_smollm2_greedy_equals_q0f32(smollm2_artifact):
    q4 = compile_model(None, "llvm", "q4f32", output_root=ROOT_ARTIFACTS, skip_existing=True)
    if set(CPU_KERNEL_FEATURES) <= host_cpu_flags():  # built with Ferrum's CPU kernels
        assert "avx512_vnni" in Manifest.load(q4).target.cpu_features
    expected = _greedy(smollm2_artifact, PROMPTS, 48)
    assert sum(len(t) for t in expected) > 100
    assert _greedy(q4, PROMPTS, 48) == expected


def test_cpu_default_is_q4f32_for_an_int4_gguf_where_the_kernels_run(smollm2_gguf, tiny_llama):
    from compile.builders import get_builder
    from compile.sources import open_source
    from compile.targets import TARGETS

    gguf, hf = open_source(str(smollm2_gguf)), open_source(str(tiny_llama))
    builder = get_builder(gguf.architecture)
    assert gguf.int4_weights and not hf.int4_weights
    kernels_run = set(CPU_KERNEL_FEATURES) <= host_cpu_flags()
    assert builder.default_quantization(TARGETS["llvm"], gguf) == ("q4f32" if kernels_run else "q0f32")
    assert builder.default_quantization(TARGETS["llvm"], hf) == "q0f32"
    assert builder.default_quantization(TARGETS["cuda"], gguf) == "q0f16"
