"""q4f32, the CPU int4 scheme: its packing (fast) and its compiled models (slow).

q4f32 keeps a GGUF's Q4_1 linear weights and Q8_0 LM head exactly, so its SmolLM2 artifact must
give the very greedy tokens of q0f32 (which dequantizes the same blocks to float32); only the
order of float32 sums differs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from checks import reference_llama as ref
from compile.compile_model import compile_model
from compile.quantize import (
    deinterleave_rows,
    dequantize_q4,
    dequantize_q8,
    interleave_rows,
    quantize_q4,
    quantize_q8,
)
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


@pytest.mark.slow
def test_q4f32_kernels_match_reference(tmp_path, tiny_llama):
    """The interleaved int4 and int8 kernels compute with exactly the weights the packer wrote (float32),
    through batch_verify and through batch_decode."""
    artifact = compile_model(str(tiny_llama), "llvm", "q4f32", output_root=tmp_path)
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
    expected = _greedy(smollm2_artifact, PROMPTS, 48)
    assert sum(len(t) for t in expected) > 100
    assert _greedy(q4, PROMPTS, 48) == expected
