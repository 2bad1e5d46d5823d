"""CUDA LLM builds with Ferrum's kernels, compiled here (no GPU needed): what goes into model.so.

Running them needs the H100 (``bench/kernel_bench.py``, ``bench/gpu_bench.py``,
``bench/greedy_check.py``); these tests pin down the build: the kernels are linked in with their
own CUDA runtime, every linear layer of a block calls them, decode is captured as CUDA graphs, the
paged KV cache gets the attention and RoPE kernels, and models the kernels cannot take build with
TVM's alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from compile.builders.llama import DECODE_GRAPH_MAX_BATCH, compile_llama, uses_cuda_kernels
from compile.kernels.build import KINDS, OPS, TUNING_DIR, tuning_table
from compile.targets import resolve_target
from ferrum.model_config import LlamaConfig
from ferrum.quantization import get_quantization

needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and not list(Path("/usr/local").glob("cuda*/bin/nvcc")),
    reason="the CUDA build needs nvcc")

TINY = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=10000.0, context_length=512, tie_word_embeddings=False)


def _build(cfg: LlamaConfig, quant: str, tmp_path: Path):
    target = resolve_target("cuda", "sm_90a")
    library = tmp_path / f"{quant}.so"
    executable, names, functions, extra = compile_llama(cfg, get_quantization(quant), target, library, lambda _: None)
    return library, executable.as_text(), functions, extra


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("quant, linear", [("q0f16", "f16"), ("q4f16", "q4")])
def test_llm_build_links_and_calls_the_kernels(tmp_path, quant, linear):
    library, text, functions, extra = _build(TINY, quant, tmp_path)
    assert "sample_tokens" in functions and extra == {"decode_max_batch": DECODE_GRAPH_MAX_BATCH}
    # every linear layer of a block, and the LM head with the final norm folded in
    for op in (f"ferrum_norm_linear_{linear}", f"ferrum_linear_res_{linear}", f"ferrum_norm_gate_up_{linear}",
               "ferrum_norm_logits_f16", "ferrum_sample_tokens"):
        assert f"call  {op} " in text, op
    # the paged KV cache is created with our prefill/decode attention and split-rotary functions
    for fn in ("ferrum_attention_prefill_ragged", "ferrum_attention_decode_paged", "ferrum_split_rotary"):
        assert f"f[{fn}]" in text, fn
    decode = text[text.index("@batch_decode:"): text.index("\n@", text.index("@batch_decode:") + 1)]
    # one graph per layer: from each attention call to the next (the first QKV reads the input, not captured)
    assert decode.count("vm.builtin.cuda_graph.run_or_capture") == TINY.num_hidden_layers
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
    for fn in ("ferrum_norm_linear_f16", "ferrum_attention_decode_paged", "ferrum_split_rotary"):
        assert f"__tvm_ffi_{fn}" in symbols
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True).stdout
    assert "libcudart" not in needed  # the CUDA runtime is linked in statically: only the driver is needed


@needs_nvcc
@pytest.mark.slow
def test_models_the_kernels_cannot_take_build_with_tvm_kernels(tmp_path):
    odd_heads = LlamaConfig(**{**TINY.to_dict(), "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16})
    target = resolve_target("cuda", "sm_90a")
    assert not uses_cuda_kernels(odd_heads, get_quantization("q0f16"), target)
    assert not uses_cuda_kernels(TINY, get_quantization("q0f32"), target)
    _, text, functions, extra = _build(odd_heads, "q0f16", tmp_path)
    assert "sample_tokens" not in functions and not extra
    assert "ferrum_" not in text and "cuda_graph" not in text


def test_scaled_rope_keeps_tvms_split_rotary():
    from compile.builders.llama import plain_rope

    assert plain_rope(TINY) == (10000.0, 1.0)
    llama31 = LlamaConfig(**{**TINY.to_dict(), "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert plain_rope(llama31) is None


def test_tuning_database_is_well_formed_and_compiled_in():
    limits = {"gemv_f16": 2, "gemv_q4": 2, "gemm_f16": 7, "path_f16": 8}
    for path in TUNING_DIR.glob("*.json"):
        entries = json.loads(path.read_text())["entries"]
        assert entries, path
        for e in entries:
            assert e["kind"] in KINDS and e["op"] in OPS, e
            assert 0 <= e["config"] <= limits[e["kind"]] and e["m_max"] >= 1 and e["n"] % 8 == 0, e
        rows = tuning_table((path.stem,)).splitlines()[1:]
        assert len(rows) == len(entries)
    assert tuning_table(("sm_80",)).splitlines()[1:] == []  # no database: heuristics only
