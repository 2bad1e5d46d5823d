"""Compiled models against the independent numpy reference (checks/reference_llama.py).

Bound held: on the CPU in float32, max |compiled logit - reference logit| <= 1e-3 (SmolLM2's
logits reach ~40; measured 8.5e-5), and the argmax agrees at every position. For int4 (q4f16) the
reference uses the same int4-rounded weights, so only fp16 arithmetic differs: bound 5e-2.
"""

from __future__ import annotations

import numpy as np
import pytest

from checks import reference_llama as ref
from conftest import write_tiny_llama
from compile.compile_model import compile_model
from compile.quantize import dequantize_q4, quantize_q4
from runtime.artifact import LlmArtifact
from runtime.model_runner import KVCacheConfig, ModelRunner
from runtime.tokenizer import ChatTokenizer

F32_BOUND = 1e-3


def all_logits(artifact_path, tokens: list[int]) -> np.ndarray:
    """Logits after every prompt position, through batch_verify on a fresh sequence."""
    runner = ModelRunner(LlmArtifact.open(artifact_path))
    runner.create_kv_cache(KVCacheConfig(2, 1024, 256, 16))
    runner.add_sequence(0)
    return runner.verify([0], [tokens])


def assert_matches(compiled: np.ndarray, expected: np.ndarray, bound: float) -> None:
    assert compiled.shape == expected.shape
    assert np.abs(compiled - expected).max() <= bound
    assert (compiled.argmax(-1) == expected.argmax(-1)).all()


def test_smollm2_logits_match_reference(smollm2_artifact, smollm2_reference):
    cfg, weights = smollm2_reference
    tok = ChatTokenizer(smollm2_artifact / "tokenizer.json", LlmArtifact.open(smollm2_artifact).generation)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Name three primary colors."}]))
    assert len(ids) > 20
    compiled = all_logits(smollm2_artifact, ids)
    expected = ref.forward(cfg, weights, ids)
    assert_matches(compiled, expected, F32_BOUND)


def test_smollm2_prefill_logits_match_reference(smollm2_artifact, smollm2_reference):
    """batch_prefill returns only the requested (last) position; it must equal the reference."""
    cfg, weights = smollm2_reference
    ids = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 2, 198, 1, 4093, 198, 19556, 17]
    runner = ModelRunner(LlmArtifact.open(smollm2_artifact))
    runner.create_kv_cache(KVCacheConfig(2, 1024, 8, 16))
    runner.add_sequence(0)
    last = None
    for start in range(0, len(ids), 8):  # chunked prefill: the cache carries context across chunks
        last = runner.prefill([0], [ids[start : start + 8]])
    assert_matches(last, ref.forward(cfg, weights, ids)[-1:], F32_BOUND)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"tie": True, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
        {"bias": True},
    ],
    ids=["untied", "tied-llama3-rope", "attention-and-mlp-bias"],
)
@pytest.mark.slow
def test_tiny_hf_llama_matches_reference(tmp_path, variant):
    folder = write_tiny_llama(tmp_path / "model", seed=7, **variant)
    artifact = compile_model(str(folder), "llvm", "q0f32", output_root=tmp_path / "art")
    tokens = list(np.random.default_rng(1).integers(0, 300, size=40))
    cfg, weights = ref.load_hf(folder)
    assert_matches(all_logits(artifact, tokens), ref.forward(cfg, weights, tokens), F32_BOUND)


@pytest.mark.slow
def test_q4f16_int4_kernels_match_reference(tmp_path, tiny_llama):
    """The fused dequantize-matmul kernels compute with exactly the int4 weights the packer wrote."""
    artifact = compile_model(str(tiny_llama), "llvm", "q4f16", output_root=tmp_path)
    cfg, weights = ref.load_hf(tiny_llama)
    for name, w in weights.items():
        if w.ndim == 2 and name not in ("embed", "head"):  # those stay float16
            packed, scale, low = quantize_q4(w.astype(np.float32), 32)
            weights[name] = dequantize_q4(packed, scale, low, 32).astype(np.float64)
    tokens = list(np.random.default_rng(2).integers(0, 300, size=24))
    compiled = all_logits(artifact, tokens)
    expected = ref.forward(cfg, weights, tokens)
    assert np.abs(compiled - expected).max() <= 5e-2
    assert (compiled.argmax(-1) == expected.argmax(-1)).mean() >= 0.9


def test_int4_packing_round_trip():
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    packed, scale, low = quantize_q4(w, 32)
    assert packed.dtype == np.uint32 and packed.shape == (8, 8) and scale.shape == low.shape == (8, 2)
    restored = dequantize_q4(packed, scale, low, 32)
    # half a step, plus the float16 rounding of the minimum
    assert np.abs(restored - w).max() <= scale.astype(np.float32).max() / 2 + np.abs(w).max() * 1e-3


def test_int4_reproduces_gguf_q4_1_blocks():
    """A Q4_1 block (d, m, nibbles q) dequantizes to q*d + m; re-quantizing those values gives back
    the same nibbles, d and m, so q4f16 keeps a Q4_1 model's weights."""
    rng = np.random.default_rng(3)
    d = rng.uniform(0.001, 0.05, (6, 4)).astype(np.float16)
    m = (-rng.uniform(0, 0.4, (6, 4))).astype(np.float16)
    q = rng.integers(0, 16, (6, 4, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # Q4_1 blocks span their whole range
    w = (q * d.astype(np.float32)[:, :, None] + m.astype(np.float32)[:, :, None]).reshape(6, 128)
    packed, scale, low = quantize_q4(w, 32)
    assert np.array_equal(scale, d) and np.array_equal(low, m)
    assert np.array_equal(dequantize_q4(packed, scale, low, 32), w)


def test_batched_prefill_and_decode_equal_single(smollm2_artifact):
    """Two sequences of different lengths in one batch_prefill / batch_decode give the same
    logits as each run alone."""
    a_ids = [1, 4093, 198, 19556, 28, 905, 17]
    b_ids = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1]
    runner = ModelRunner(LlmArtifact.open(smollm2_artifact))
    runner.create_kv_cache(KVCacheConfig(4, 2048, 64, 16))

    def alone(ids: list[int], next_token: int) -> tuple[np.ndarray, np.ndarray]:
        runner.add_sequence(9)
        first = runner.prefill([9], [ids])[0]
        second = runner.decode([9], [next_token])[0]
        runner.remove_sequence(9)
        return first, second

    a_first, a_second = alone(a_ids, 30)
    b_first, b_second = alone(b_ids, 31)
    runner.add_sequence(0)
    runner.add_sequence(1)
    both_first = runner.prefill([0, 1], [a_ids, b_ids])
    both_second = runner.decode([0, 1], [30, 31])
    for got, want in [(both_first[0], a_first), (both_first[1], b_first),
                      (both_second[0], a_second), (both_second[1], b_second)]:
        assert np.abs(got - want).max() <= 1e-4
