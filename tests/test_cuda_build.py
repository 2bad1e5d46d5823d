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

from compile.builders.decoder import DECODE_GRAPH_MAX_BATCH, compile_decoder, uses_cuda_kernels
from compile.kernels.build import TUNING_DIR, tuning_table
from compile.kernels.constants import CONFIGS, HEADER_NAME, KINDS, OPS, constants_header
from compile.kernels.ops import kernel_blockers
from compile.targets import resolve_target
from ferrum.manifest import SAMPLE_PARAMS
from ferrum.model_config import DecoderConfig
from ferrum.quantization import get_quantization

needs_nvcc = pytest.mark.skipif(
    shutil.which("nvcc") is None and not list(Path("/usr/local").glob("cuda*/bin/nvcc")),
    reason="the CUDA build needs nvcc")

TINY = DecoderConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
                   rope_theta=10000.0, context_length=512, tie_word_embeddings=False)


def _build(cfg: DecoderConfig, quant: str, tmp_path: Path, log: list[str] | None = None):
    target = resolve_target("cuda", "sm_90a")
    compiled = compile_decoder(cfg, get_quantization(quant), target, tmp_path, (log if log is not None else []).append)
    # TVM's own CUDA modules are packaged as fatbins next to the library (loading compiles nothing)
    assert compiled.library.kernels and all((tmp_path / rel).stat().st_size for rel in compiled.library.kernels.values())
    return tmp_path / "model.so", compiled.library.executable.as_text(), compiled.functions, compiled.extra


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("quant, linear", [("q0f16", "f16"), ("q4f16", "q4")])
def test_llm_build_links_and_calls_the_kernels(tmp_path, quant, linear):
    library, text, functions, extra = _build(TINY, quant, tmp_path)
    assert {"sample_tokens", "sample_tokens_masked"} <= set(functions)
    assert extra == {"decode_max_batch": DECODE_GRAPH_MAX_BATCH}
    # every linear layer of a block, the LM head with the final norm folded in, both samplers
    for op in (f"ferrum_norm_linear_{linear}", f"ferrum_linear_res_{linear}", f"ferrum_norm_gate_up_{linear}",
               "ferrum_norm_logits_f16", "ferrum_sample_tokens", "ferrum_sample_tokens_masked"):
        assert f"call  {op} " in text, op
    # the paged KV cache is created with our prefill/decode attention and split-rotary functions
    for fn in ("ferrum_attention_prefill_ragged", "ferrum_attention_decode_paged", "ferrum_split_rotary"):
        assert f"f[{fn}]" in text, fn
    decode = text[text.index("@batch_decode:"): text.index("\n@", text.index("@batch_decode:") + 1)]
    # one graph per layer: from each attention call to the next (the first QKV reads the input, not captured)
    assert decode.count("vm.builtin.cuda_graph.run_or_capture") == TINY.num_hidden_layers
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)],
                             capture_output=True, text=True, check=True).stdout
    for fn in ("ferrum_norm_linear_f16", "ferrum_attention_decode_paged", "ferrum_split_rotary",
               "ferrum_sample_tokens_masked"):
        assert f"__tvm_ffi_{fn}" in symbols
    needed = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in needed  # the CUDA runtime is linked in statically: only the driver is needed


def test_kernel_gate_reads_the_feature_flags():
    target, f16 = resolve_target("cuda", "sm_90a"), get_quantization("q0f16")
    assert uses_cuda_kernels(TINY, f16, target) and kernel_blockers(TINY, f16) == []
    assert not uses_cuda_kernels(TINY, f16, resolve_target("llvm"))
    assert kernel_blockers(TINY, get_quantization("q0f32")) == ["q0f32 computes in float32 (the kernels take float16)"]
    for flag in ("qkv_bias", "qk_norm"):  # added between the QKV kernel and attention (LlamaDecoderLayer)
        cfg = DecoderConfig(**{**TINY.to_dict(), flag: True})
        assert uses_cuda_kernels(cfg, f16, target) and kernel_blockers(cfg, f16) == [], flag
    for flag, value, says in [("o_bias", True, "output projection biases"), ("mlp_bias", True, "MLP projection biases"),
                              ("sliding_window", 4096, "sliding-window"),
                              ("activation", "gelu_pytorch_tanh", "gelu_pytorch_tanh/rmsnorm"),
                              ("norm", "layernorm", "silu/layernorm")]:
        window = {"window_layers": [0]} if flag == "sliding_window" else {}
        cfg = DecoderConfig(**{**TINY.to_dict(), flag: value, **window})
        assert not uses_cuda_kernels(cfg, f16, target), flag
        assert len(kernel_blockers(cfg, f16)) == 1 and says in kernel_blockers(cfg, f16)[0], flag


@needs_nvcc
@pytest.mark.slow
@pytest.mark.parametrize("flag, quant, linear, between", [("qkv_bias", "q4f16", "q4", "q/k/v bias add"),
                                                          ("qk_norm", "q0f16", "f16", "per-head q/k RMSNorm")])
def test_qwen_blocks_build_with_the_kernels(tmp_path, flag, quant, linear, between):
    """Qwen2's q/k/v bias and Qwen3's q/k norm run as TVM ops between Ferrum's QKV kernel and
    attention: the block still calls the fused kernels, and the log says what runs between them."""
    cfg = DecoderConfig(**{**TINY.to_dict(), flag: True})
    log: list[str] = []
    _, text, functions, _ = _build(cfg, quant, tmp_path, log)
    assert {"sample_tokens", "sample_tokens_masked"} <= set(functions)
    for op in (f"ferrum_norm_linear_{linear}", f"ferrum_linear_res_{linear}", f"ferrum_norm_gate_up_{linear}"):
        assert f"call  {op} " in text, op
    assert "f[ferrum_split_rotary" in text
    assert (" qk_norm" in text) == (flag == "qk_norm")  # one TIR function over the fused QKV
    assert any("with Ferrum's CUDA kernels" in line and between in line for line in log), log


@needs_nvcc
@pytest.mark.slow
def test_models_the_kernels_cannot_take_build_with_tvm_kernels(tmp_path):
    odd_heads = DecoderConfig(**{**TINY.to_dict(), "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16,
                                 "mlp_bias": True})
    log: list[str] = []
    _, text, functions, extra = _build(odd_heads, "q0f16", tmp_path, log)
    assert not {"sample_tokens", "sample_tokens_masked"} & set(functions) and not extra
    assert "ferrum_" not in text and "cuda_graph" not in text
    gate = next(line for line in log if "CUDA kernels cannot take this model" in line)
    assert "head dim 16" in gate and "MLP projection biases" in gate


def test_scaled_rope_keeps_tvms_split_rotary():
    from compile.builders.decoder import plain_rope

    assert plain_rope(TINY) == (10000.0, 1.0)
    llama31 = DecoderConfig(**{**TINY.to_dict(), "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    assert plain_rope(llama31) is None


def test_tuning_database_is_well_formed_and_compiled_in():
    for path in TUNING_DIR.glob("*.json"):
        entries = json.loads(path.read_text())["entries"]
        assert entries, path
        for e in entries:
            assert e["kind"] in KINDS and e["op"] in OPS, e
            assert 0 <= e["config"] < CONFIGS[e["kind"]] and e["m_max"] >= 1 and e["n"] % 8 == 0, e
        rows = tuning_table((path.stem,)).splitlines()[1:]
        assert len(rows) == len(entries)
    assert tuning_table(("sm_80",)).splitlines()[1:] == []  # no database: heuristics only


def test_cuda_constants_header_is_generated_from_the_python_definitions():
    """The kernels' enums and the sampling-row layout are never written by hand in the CUDA sources."""
    header = constants_header()
    assert "enum Kind { GEMV_F16 = 0, GEMV_Q4 = 1, GEMM_F16 = 2, PATH_F16 = 3 };" in header
    assert "enum GemvOp { OP_PLAIN = 0, OP_NORM = 1, OP_GATED = 2, OP_RES = 3 };" in header
    assert f"constexpr int kSampleParams = {len(SAMPLE_PARAMS)};" in header
    assert "constexpr int kSampleTopK = 2;" in header and SAMPLE_PARAMS[2] == "top_k"
    assert f"kConfigCount[kNumKinds] = {{{', '.join(str(CONFIGS[k]) for k in KINDS)}}};" in header
    sources = "".join(p.read_text() for p in (TUNING_DIR.parent / "cuda").glob("*.cu*"))
    assert f'#include "{HEADER_NAME}"' in sources
    for hand_written in ("enum Kind", "enum GemvOp", "kSampleParams =", "prm[0]"):
        assert hand_written not in sources, hand_written


QWEN3_30B_A3B_MOE = DecoderConfig(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=1,
                                  num_attention_heads=32, num_key_value_heads=4, head_dim=128, rms_norm_eps=1e-6,
                                  rope_theta=1e6, context_length=4096, tie_word_embeddings=False,
                                  architecture="qwen3_moe", qk_norm=True, num_experts=128, num_experts_per_tok=8,
                                  moe_intermediate_size=768, norm_topk_prob=True)


def _moe_mlp_after_row_dispatch(quant: str) -> dict:
    """The expert-gather PrimFuncs of Qwen3-30B-A3B's MLP (name → function) once RowDispatch ran."""
    import tvm
    from tvm import tirx
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import spec

    from compile.model.layers import EXPERT_BLOCK
    from compile.model.qwen3_moe import MoeMLP
    from compile.pipelines import _stages
    from compile.schedules.cuda import RowDispatch

    class Mlp(nn.Module):
        def __init__(self):
            self.mlp = MoeMLP(QWEN3_30B_A3B_MOE, get_quantization(quant))

        def forward(self, x):
            return self.mlp(x)

    mod, _ = Mlp().export_tvm(spec={"forward": {"x": spec.Tensor([1, "s", 2048], "float16")}})
    target = resolve_target("cuda", "sm_90a").tvm_target
    stages = _stages("cuda")
    with target:
        passes = stages.library_dispatch_passes(target) + stages.legalize_passes(target)[:-1] + [RowDispatch()]
        mod = tvm.transform.Sequential(passes)(mod)
    gathers = {gv.name_hint: f for gv, f in mod.functions_items()
               if isinstance(f, tirx.PrimFunc) and EXPERT_BLOCK in f.script()}
    assert len(gathers) == 2 and any("multiply" in name for name in gathers), sorted(gathers)
    return gathers


def test_int4_expert_gathers_take_the_expert_gemv_whole():
    """Both int4 expert projections of Qwen3-30B-A3B's MLP (the down one fused with the routing
    weights' normalize and multiply) become one kernel each: every statement under blockIdx.x, one
    warp of lanes per gathered row, float32 partial sums in registers reduced across the lanes."""
    from tvm import tirx

    for name, func in _moe_mlp_after_row_dispatch("q4f16").items():
        assert "tirx.is_scheduled" in func.attrs, name
        body = func.body.block.body
        kernels = body.seq if isinstance(body, tirx.SeqStmt) else [body]
        assert [k.thread_binding.thread_tag for k in kernels] == ["blockIdx.x"], name
        script = func.script()
        assert 'scope="local"' in script and script.count('thread="threadIdx.x"') == 2, name
        assert 'T.thread_binding(T.int64(32), thread="threadIdx.x")' in script, name


def test_float16_expert_gathers_keep_the_generic_schedule():
    """q0f16 gathers are left to dlight's default rules, which measured faster for them."""
    for name, func in _moe_mlp_after_row_dispatch("q0f16").items():
        assert "tirx.is_scheduled" not in func.attrs, name
